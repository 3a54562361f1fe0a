"""Checkpoints: atomic writes, RNG state, config compatibility, and rebuilding an agent from one file.

A checkpoint holds only tensors, numbers, strings, lists, tuples and dicts, so it loads with
torch.load(weights_only=True): a crafted file cannot run code, and the agent it rebuilds comes from RoboIMI's own
classes only.
"""
import copy
import errno
import importlib
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from roboimi.atomic_file import atomic_write_path
from roboimi.vla.training.settings import flatten_config

# Keys whose change makes a checkpoint's weights or data contract meaningless for the current run.
MODEL_DEFINING_KEYS = ("agent", "data.camera_names", "data.image_shape")


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that torch cannot read at all (truncated, overwritten, not a torch file)."""


def tensor_bytes(tree) -> int:
    """Bytes of the tensors in a nested dict / list payload: about what torch.save writes."""
    if torch.is_tensor(tree):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(value) for value in tree)
    return 0


def policy_export(checkpoint: dict) -> dict:
    """The evaluation export (policy.pt) of a training checkpoint: its rollout weights (EMA when kept), config and
    step; no optimizer state, so a fraction of the size."""
    weights = "ema" if "ema" in checkpoint else "raw"
    state = checkpoint["ema"] if weights == "ema" else checkpoint["agent"]
    export = {"agent": state, "weights": weights, "config": checkpoint["config"], "global_step": checkpoint["global_step"]}
    if "selection" in checkpoint:
        export["selection"] = checkpoint["selection"]
    return export


def weight_selection(checkpoint: dict) -> dict:
    """How a checkpoint's weights were chosen: {"rule": "as_trained"} (the weights of their step, picked by nothing)
    or {"rule": "best_rollout", "seeds": [first, last]} (the best rollout validation, on those episode seeds).

    A file written before checkpoints recorded this gets {"rule": "unknown"}, with the seeds its run validated on
    when it validated any (before train.rollout_val_seed, the eval.seed range): it may have been picked on them.
    """
    if "selection" in checkpoint:
        return checkpoint["selection"]
    train = checkpoint["config"].get("train", {})
    if not (train.get("rollout_val_freq_epochs") or train.get("rollout_validate_on_checkpoint")):
        return {"rule": "unknown"}
    first = train.get("rollout_val_seed", checkpoint["config"].get("eval", {}).get("seed", 1000))
    return {"rule": "unknown", "seeds": validation_seeds(first, train.get("rollout_num_episodes", 5))}


def validation_seeds(first: int, num_episodes: int) -> list[int]:
    """[first, last] episode seed of a rollout validation of `num_episodes` episodes from seed `first`."""
    return [first, first + num_episodes - 1]


def scored_selection_seeds(summary: dict, selection: dict) -> list[int]:
    """The seeds of `summary`'s episodes on which the weights were also selected (empty: the score is held out)."""
    if "seeds" not in selection:
        return []
    first, last = selection["seeds"]
    return [e["seed"] for e in summary["episodes"] if first <= e["seed"] <= last]


def describe_selection(selection: dict) -> str:
    """A weight_selection record in words, as reports print it."""
    if selection["rule"] == "as_trained":
        return "the weights of their step, picked by nothing"
    seeds = "" if "seeds" not in selection else f" on seeds {selection['seeds'][0]}-{selection['seeds'][1]}"
    if selection["rule"] == "best_rollout":
        return f"the best rollout validation{seeds}"
    return f"not recorded (written before checkpoints recorded it; its run validated{seeds or ' on no rollouts'})"


def save_checkpoint(path, payload: dict) -> Path:
    """torch.save through a temporary file + fsync + os.replace: never a half-written checkpoint.

    A write the file system refuses (disk full, file size limit) is an OSError naming the file, the cause and the
    bytes needed; the previous file at `path` stays intact.
    """
    path = Path(path)
    try:
        with atomic_write_path(path) as tmp_path:
            torch.save(payload, tmp_path)
    except (OSError, RuntimeError) as error:
        # torch reports a failed write as "enforce fail at inline_container.cc ... unexpected pos"; the OS's
        # reason is in the error's chain or visible as too little free space.
        cause = next((e for e in (error, error.__cause__, error.__context__) if isinstance(e, OSError)), None)
        free = shutil.disk_usage(path.parent).free
        needed = tensor_bytes(payload)
        if cause is None and free >= needed and "unexpected pos" not in str(error):
            raise
        if cause is not None and cause.strerror:
            reason, code = cause.strerror, cause.errno
        elif free < needed:
            reason, code = "no space left on the device", errno.ENOSPC
        else:
            reason, code = "the file system refused the write (a file size limit or a quota)", errno.EIO
        raise OSError(
            code,
            f"Could not write checkpoint {path}: {reason}. It needs about {needed / 2**20:.1f} MiB; "
            f"{free / 2**20:.1f} MiB are free on that file system. Free space (or lower train.keep_last), or point "
            f"hydra.run.dir at another disk and resume with train.resume=auto; earlier checkpoints are intact.",
        ) from error
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"Checkpoint {path} is a directory. Pass a .pt file in it, e.g. {path / 'policy.pt'} or "
            f"{path / 'checkpoints' / 'last.pt'}."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist. Pass the .pt file written by train_vla.py, "
            f"e.g. runs/<run>/checkpoints/last.pt."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; only the line naming the refused object is worth showing.
        refused = next((line for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if refused is None:  # not a refused object: bytes that are no pickle at all
            raise CorruptCheckpointError(
                f"Could not read checkpoint {path} ({str(exc).splitlines()[0]}). The file is corrupt or not a "
                f"RoboIMI checkpoint."
            ) from exc
        raise RuntimeError(
            f"Refusing to load checkpoint {path}: it holds objects other than tensors, numbers, strings and containers "
            f"({refused.strip()}). It was not written by this version of RoboIMI or was tampered with; loading it "
            f"could run code. Retrain, or re-save a file you trust with plain contents."
        ) from exc
    except Exception as exc:
        raise CorruptCheckpointError(
            f"Could not read checkpoint {path} ({exc}). The file is corrupt or not a RoboIMI checkpoint."
        ) from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict):
        raise ValueError(
            f"{path} is not a RoboIMI checkpoint: it holds no stored config (a bare state_dict?). Pass a file written by "
            f"train_vla.py: runs/<run>/policy.pt to evaluate, runs/<run>/checkpoints/last.pt to resume."
        )
    require_trusted_config(checkpoint["config"], path)
    return checkpoint


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


def _model_class(target) -> type | None:
    """The class `target` names when it is a torch module class defined in the RoboIMI module the name points at.

    Only that module is imported (a RoboIMI one); an attribute reached through it (`roboimi.x.os.system`), a
    function, or a class imported there from elsewhere is None.
    """
    if not isinstance(target, str) or not re.fullmatch(r"roboimi(\.[A-Za-z_]\w*)+", target):
        return None
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    candidate = getattr(module, name, None)
    defined_here = isinstance(candidate, type) and candidate.__module__ == module_name
    return candidate if defined_here and issubclass(candidate, torch.nn.Module) else None


def require_trusted_config(config, source, where: str = "config") -> None:
    """Refuse a stored config that would make instantiation or OmegaConf run anything but RoboIMI's model classes.

    Checked recursively through dicts and lists: every `_target_` must name a torch module class defined in a RoboIMI
    module; of Hydra's other instantiation keys only `_partial_: true` is allowed (it binds such a class and calls
    nothing); and no string may hold a `${...}` interpolation, which OmegaConf would resolve (`${oc.env:...}` reads
    the evaluating user's environment). Configs written by train_vla.py are stored resolved and pass.
    ValueError names `source` (the file) and the offending key.
    """
    def refuse(key: str, value, why: str):
        raise ValueError(
            f"Refusing checkpoint {source}: its stored config sets {key}={value!r}, {why}. Only configs of RoboIMI "
            f"model classes are instantiated from a checkpoint; use one written by train_vla.py."
        )

    if isinstance(config, dict):
        for key, value in config.items():
            where_key = f"{where}.{key}"
            if key == "_target_" and _model_class(value) is None:
                refuse(where_key, value, "which is not a model class defined in a RoboIMI module")
            elif key == "_partial_" and value is not True:
                refuse(where_key, value, "and only `_partial_: true` is allowed")
            elif isinstance(key, str) and key.startswith("_") and key.endswith("_") and key not in ("_target_", "_partial_"):
                refuse(where_key, value, f"a Hydra instantiation key ({key}) that could call foreign code")
            else:
                require_trusted_config(value, source, where_key)
    elif isinstance(config, (list, tuple)):
        for index, value in enumerate(config):
            require_trusted_config(value, source, f"{where}[{index}]")
    elif isinstance(config, str) and "${" in config:
        refuse(where, config, "an interpolation OmegaConf would resolve")


def upgrade_config(config: dict) -> dict:
    """A checkpoint config of an earlier version, in today's layout.

    Before the agent owned its observation spec, the state keys lived only under data, and the encoder could resize
    images itself (resize_shape), which is now done only when the dataset reads them (data.image_resize_shape).
    Before `derivative_precision`, the iMF derivative passes ran in the step's precision: fp32 unless the run set
    train.bf16_autocast, so fp32 is taken. Before `camera_dropout`, every camera was always seen: 0. Before
    `noise_scale`, every plan started from unit noise: 1.
    """
    config = copy.deepcopy(config)
    agent = config["agent"]
    agent.setdefault("state_keys", config.get("data", {}).get("state_keys", ["qpos"]))
    agent.setdefault("noise_scale", 1.0)
    if agent.get("_target_") == "roboimi.vla.agent_imf.IMFVLAAgent":
        agent.setdefault("derivative_precision", "fp32")
    backbone = agent.get("vision_backbone", {})
    if backbone.get("_target_", "").endswith(".ResNetDiffusionBackbone"):
        backbone.setdefault("camera_dropout", 0.0)
    if backbone.pop("resize_shape", None) is not None:
        raise ValueError(
            "The checkpoint's encoder resizes its images (agent.vision_backbone.resize_shape), which this version of "
            "RoboIMI no longer does: retrain with data.image_resize_shape=[H,W] instead."
        )
    return config


def build_agent_from_checkpoint(checkpoint: dict, device: torch.device, use_ema: bool = True, source="<in memory>"):
    """Rebuild the agent from the config, weights and normalization stats stored in a checkpoint.

    `use_ema` takes the EMA weights where the checkpoint has them (train.use_ema), else the trained weights. A policy
    export (policy.pt) holds one set of weights and says which. Returns (agent, cfg, 'ema' | 'raw'). `source` names the
    file in errors; its config is checked again here, since a caller may have merged settings into it.
    """
    require_trusted_config(checkpoint["config"], source)
    cfg: DictConfig = OmegaConf.create(upgrade_config(checkpoint["config"]))
    agent = instantiate(cfg.agent)
    if use_ema and "ema" in checkpoint:
        state, weights = checkpoint["ema"], "ema"
    else:  # a training checkpoint's trained weights, or a policy export's only weights
        state, weights = checkpoint["agent"], checkpoint.get("weights", "raw")
    agent.load_state_dict(state)
    return agent.to(device), cfg, weights
