"""Min-max normalization of qpos and action, their per-dimension statistics, and the stats cache.

The stats are computed over all frames of the training episodes and cached next to the data as
`<dataset_dir>/.roboimi_stats_<key>.json`. The key hashes the names, sizes and modification times of the
training files, so the cache follows the file set and the split: rewriting, adding or re-splitting
episodes yields a different key and a fresh computation.
"""

import hashlib
import json
import os
import warnings

import numpy as np
import torch

from roboimi.atomic_file import atomic_write_path

STATS_KEYS = tuple(f"{name}_{stat}" for name in ("qpos", "action") for stat in ("min", "max", "mean", "std"))
CACHE_FORMAT = 1


def _as_operand(value, like):
    """Stats may arrive as numpy arrays while x is a tensor (or the reverse); compute in x's type."""
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return np.asarray(value, dtype=np.result_type(like, np.float32))


def normalize_minmax(x, min, max, eps=1e-8):
    """Map [min, max] to [-1, 1] per dimension; a constant dimension maps to -1. Numpy arrays or tensors."""
    min, max = _as_operand(min, x), _as_operand(max, x)
    return 2 * (x - min) / (max - min + eps) - 1


def unnormalize_minmax(y, min, max, eps=1e-8):
    """Inverse of `normalize_minmax`."""
    min, max = _as_operand(min, y), _as_operand(max, y)
    return (y + 1) / 2 * (max - min + eps) + min


def compute_stats(qpos_arrays, action_arrays):
    """Per-dimension stats over all frames. Inputs: lists of (T_i, S) and (T_i, A) arrays, one per episode."""
    stats = {}
    for name, arrays in (("qpos", qpos_arrays), ("action", action_arrays)):
        frames = np.concatenate(arrays, axis=0).astype(np.float64)  # (sum T_i, dim)
        stats[f"{name}_min"] = frames.min(axis=0)
        stats[f"{name}_max"] = frames.max(axis=0)
        stats[f"{name}_mean"] = frames.mean(axis=0)
        stats[f"{name}_std"] = frames.std(axis=0)
    return {key: value.astype(np.float32) for key, value in stats.items()}


def stats_cache_key(train_paths):
    """Hash of the training files' names, sizes and modification times, in training order."""
    entries = []
    for path in train_paths:
        status = os.stat(path)
        entries.append([os.path.basename(path), status.st_size, status.st_mtime_ns])
    payload = json.dumps({"format": CACHE_FORMAT, "train_files": entries})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _read_cache(path, key):
    try:
        with open(path) as f:
            content = json.load(f)
        if content.get("key") != key:
            return None
        stats = {name: np.asarray(content["stats"][name], dtype=np.float32) for name in STATS_KEYS}
        if not all(np.isfinite(value).all() for value in stats.values()):
            warnings.warn(f"Ignoring stats cache '{path}': it holds NaN or inf; recomputing the stats.", stacklevel=3)
            return None
        return stats
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"Ignoring unreadable stats cache '{path}' ({error}); recomputing the stats.", stacklevel=3)
        return None


def _write_cache_atomically(path, key, stats):
    content = {"key": key, "stats": {name: stats[name].tolist() for name in STATS_KEYS}}
    with atomic_write_path(path) as tmp_path:
        tmp_path.write_text(json.dumps(content))


def load_or_compute_stats(dataset_dir, train_paths, compute):
    """Cached stats for `train_paths`, or `compute()` (and cache the result). Returns a dict of float32 arrays."""
    key = stats_cache_key(train_paths)
    path = os.path.join(dataset_dir, f".roboimi_stats_{key}.json")
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    stats = compute()
    if not all(np.isfinite(value).all() for value in stats.values()):
        raise ValueError(
            f"The normalization stats of '{dataset_dir}' are not finite; an episode holds NaN or inf values. "
            f"Find it by rebuilding the dataset (episode discovery names the file and frame)."
        )
    try:
        _write_cache_atomically(path, key, stats)
    except OSError as error:
        warnings.warn(
            f"Could not cache normalization stats in '{dataset_dir}' ({error}); they are recomputed on every run. "
            f"Make the directory writable to cache them.",
            stacklevel=2,
        )
    return stats
