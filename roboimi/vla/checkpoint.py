"""Checkpoints: atomic writes, RNG state, config compatibility, and rebuilding an agent from one file."""
import random
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from roboimi.atomic_file import atomic_write_path

# Keys whose change makes a checkpoint's weights or data contract meaningless for the current run.
MODEL_DEFINING_KEYS = ("agent", "data.camera_names", "data.image_shape")


def save_checkpoint(path, payload: dict) -> Path:
    """torch.save through a temporary file + fsync + os.replace: never a half-written checkpoint."""
    with atomic_write_path(path) as tmp_path:
        torch.save(payload, tmp_path)
    return Path(path)


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist. Pass the .pt file written by train_vla.py, "
            f"e.g. runs/<run>/checkpoints/last.pt."
        )
    try:
        # weights_only=False: the payload holds the resolved config and numpy RNG state, not just tensors.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise RuntimeError(f"Could not read checkpoint {path} ({exc}). The file is corrupt or not a RoboIMI checkpoint.") from exc


def capture_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def model_config_differences(saved_config: dict, current_config: dict) -> list[str]:
    """Dotted keys under MODEL_DEFINING_KEYS whose values differ, as 'key: saved -> current' lines."""
    saved, current = _flatten(saved_config), _flatten(current_config)
    differences = []
    for key in sorted(set(saved) | set(current)):
        if not any(key == root or key.startswith(root + ".") for root in MODEL_DEFINING_KEYS):
            continue
        if saved.get(key, "<missing>") != current.get(key, "<missing>"):
            differences.append(f"{key}: {saved.get(key, '<missing>')!r} -> {current.get(key, '<missing>')!r}")
    return differences


def build_agent_from_checkpoint(checkpoint: dict, device: torch.device):
    """Rebuild the agent from the config, weights and normalization stats stored in a checkpoint."""
    cfg: DictConfig = OmegaConf.create(checkpoint["config"])
    agent = instantiate(cfg.agent)
    agent.load_state_dict(checkpoint["agent"])
    agent.set_normalization_stats(checkpoint["normalization_stats"])
    return agent.to(device), cfg
