"""Checkpoints: atomic writes, RNG state, config compatibility, and rebuilding an agent from one file.

A checkpoint holds only tensors, numbers, strings, lists, tuples and dicts, so it loads with
torch.load(weights_only=True): a crafted file cannot run code, and the agent it rebuilds comes from RoboIMI's own
classes only.
"""
import copy
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from roboimi.atomic_file import atomic_write_path
from roboimi.vla.settings import flatten_config

# Package whose classes a checkpoint's config may instantiate.
TRUSTED_TARGET_PREFIX = "roboimi."
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
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; only the line naming the refused object is worth showing.
        refused = next((line for line in str(exc).splitlines() if "GLOBAL" in line), str(exc).splitlines()[0])
        raise RuntimeError(
            f"Refusing to load checkpoint {path}: it holds objects other than tensors, numbers, strings and containers "
            f"({refused.strip()}). It was not written by this version of RoboIMI or was tampered with; loading it "
            f"could run code. Retrain, or re-save a file you trust with plain contents."
        ) from exc
    except Exception as exc:
        raise RuntimeError(f"Could not read checkpoint {path} ({exc}). The file is corrupt or not a RoboIMI checkpoint.") from exc


def capture_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as tuples, ints and tensors."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_config_differences(saved_config: dict, current_config: dict) -> list[str]:
    """Dotted keys under MODEL_DEFINING_KEYS whose values differ, as 'key: saved -> current' lines."""
    saved, current = flatten_config(saved_config), flatten_config(current_config)
    differences = []
    for key in sorted(set(saved) | set(current)):
        if not any(key == root or key.startswith(root + ".") for root in MODEL_DEFINING_KEYS):
            continue
        if saved.get(key, "<missing>") != current.get(key, "<missing>"):
            differences.append(f"{key}: {saved.get(key, '<missing>')!r} -> {current.get(key, '<missing>')!r}")
    return differences


def require_trusted_targets(config: dict, where: str = "agent") -> None:
    """Refuse any `_target_` outside RoboIMI in a checkpoint's config: instantiating it would run foreign code."""
    for key, value in config.items():
        if key == "_target_" and not str(value).startswith(TRUSTED_TARGET_PREFIX):
            raise ValueError(
                f"The checkpoint's config names {where}._target_={value!r}, which is not a RoboIMI class "
                f"({TRUSTED_TARGET_PREFIX}*); refusing to instantiate it. Use a checkpoint written by train_vla.py."
            )
        if isinstance(value, dict):
            require_trusted_targets(value, f"{where}.{key}")


def upgrade_config(config: dict) -> dict:
    """A checkpoint config written before the agent owned its observation spec, in today's layout.

    Then the state keys lived only under data, and the encoder could resize images itself (resize_shape), which
    is now done only when the dataset reads them (data.image_resize_shape).
    """
    config = copy.deepcopy(config)
    agent = config["agent"]
    agent.setdefault("state_keys", config.get("data", {}).get("state_keys", ["qpos"]))
    backbone = agent.get("vision_backbone", {})
    if backbone.pop("resize_shape", None) is not None:
        raise ValueError(
            "The checkpoint's encoder resizes its images (agent.vision_backbone.resize_shape), which this version of "
            "RoboIMI no longer does: retrain with data.image_resize_shape=[H,W] instead."
        )
    return config


def build_agent_from_checkpoint(checkpoint: dict, device: torch.device, use_ema: bool = True):
    """Rebuild the agent from the config, weights and normalization stats stored in a checkpoint.

    `use_ema` takes the EMA weights where the checkpoint has them (train.use_ema), else the trained weights. A policy
    export (policy.pt) holds one set of weights and says which. Returns (agent, cfg, 'ema' | 'raw').
    """
    require_trusted_targets(checkpoint["config"]["agent"])
    cfg: DictConfig = OmegaConf.create(upgrade_config(checkpoint["config"]))
    agent = instantiate(cfg.agent)
    if use_ema and "ema" in checkpoint:
        state, weights = checkpoint["ema"], "ema"
    else:  # a training checkpoint's trained weights, or a policy export's only weights
        state, weights = checkpoint["agent"], checkpoint.get("weights", "raw")
    agent.load_state_dict(state)
    return agent.to(device), cfg, weights
