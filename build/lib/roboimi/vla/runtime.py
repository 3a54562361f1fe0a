"""Process-level setup shared by the training and evaluation scripts: device choice and seeding."""
import random

import numpy as np
import torch


def resolve_device(requested: str) -> torch.device:
    """Map `train.device` (auto | cpu | cuda[:N]) to a torch.device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"train.device={requested} was asked for but CUDA is not available on this machine "
            f"(torch {torch.__version__}). Use train.device=auto or train.device=cpu."
        )
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ValueError(f"Unknown device {requested!r}. Use one of: auto, cpu, cuda, cuda:<index>.")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
