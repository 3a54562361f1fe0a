"""Process-level setup shared by the training and evaluation scripts: device choice and seeding."""
import random

import numpy as np
import torch


def resolve_device(requested: str, key: str = "train.device") -> torch.device:
    """Map a device setting (auto | cpu | cuda[:N]) to a torch.device; errors name `key`, the setting's name."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"{key}={requested} was asked for but CUDA is not available on this machine "
            f"(torch {torch.__version__}). Use {key}=auto or {key}=cpu."
        )
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ValueError(f"Unknown device {key}={requested!r}. Use one of: auto, cpu, cuda, cuda:<index>.")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
