"""The one entry point from a dataset directory to train/val datasets and normalization stats."""

from dataclasses import dataclass

import os

import numpy as np

from roboimi.vla.data.episode_files import check_camera_shapes_agree, discover_episodes
from roboimi.vla.data.hdf5_episode_dataset import HDF5EpisodeDataset
from roboimi.vla.data.normalization import compute_stats, load_or_compute_stats


@dataclass
class DatasetBundle:
    train: HDF5EpisodeDataset
    val: HDF5EpisodeDataset | None  # None when val_split == 0
    stats: dict  # qpos_/action_ min, max, mean, std: float32 (S,) / (A,), training episodes only; qpos = the state
    state_dim: int
    action_dim: int
    image_shape: tuple | None  # (H, W) of the returned images; None without cameras
    train_episodes: list  # paths, sorted by episode index
    val_episodes: list
    skipped: list  # (path, reason)


def split_episodes(num_episodes, val_split, seed):
    """Positions of the train and val episodes, each sorted; deterministic in (num_episodes, val_split, seed)."""
    if not 0.0 <= val_split < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}. Fix train.val_split.")
    if val_split == 0.0:
        return list(range(num_episodes)), []
    if num_episodes < 2:
        raise ValueError(
            f"val_split={val_split} needs at least 2 episodes (one per split) but the dataset has {num_episodes}. "
            f"Record more episodes or set train.val_split=0."
        )
    num_val = min(max(round(val_split * num_episodes), 1), num_episodes - 1)
    order = np.random.default_rng(seed).permutation(num_episodes)
    return sorted(order[num_val:].tolist()), sorted(order[:num_val].tolist())


PRELOAD_MEMORY_FRACTION = 0.25  # preload_images=auto decodes frames into memory when they take at most this much


def should_preload(setting, decoded_bytes: int) -> bool:
    """Resolve data.preload_images: true | false | auto (when the decoded frames fit PRELOAD_MEMORY_FRACTION of RAM)."""
    if setting == "auto":
        return 0 < decoded_bytes <= PRELOAD_MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"data.preload_images must be true, false or auto, got {setting!r}.")


def build_datasets(
    dataset_dir,
    camera_names,
    obs_horizon,
    pred_horizon,
    val_split=0.0,
    seed=42,
    image_resize_shape=None,
    state_keys=("qpos",),
    preload_images=False,
):
    """state_keys: `/observations/<key>` datasets concatenated, in order, into the state the samples call qpos.

    preload_images: true | false | auto, see `should_preload`; samples are the same either way.
    """
    camera_names, state_keys = list(camera_names), tuple(state_keys)
    episodes, skipped = discover_episodes(
        dataset_dir, camera_names, obs_horizon, state_keys, same_image_size=image_resize_shape is None
    )
    if image_resize_shape is None:
        check_camera_shapes_agree(episodes[0], camera_names)
    train_ids, val_ids = split_episodes(len(episodes), val_split, seed)

    def make(ids):
        chosen = [episodes[i] for i in ids]
        return HDF5EpisodeDataset(chosen, camera_names, obs_horizon, pred_horizon, image_resize_shape, state_keys)

    train = make(train_ids)
    val = make(val_ids) if val_ids else None
    splits = [dataset for dataset in (train, val) if dataset is not None]
    if should_preload(preload_images, sum(dataset.decoded_image_bytes for dataset in splits)):
        for dataset in splits:
            dataset.preload_images()

    def compute():
        return compute_stats(train.qpos, train.action)

    # The cache key covers the training files but not the state layout, so only the default state is cached;
    # other layouts are recomputed (low-dimensional, a fraction of a second).
    stats = load_or_compute_stats(dataset_dir, train.episode_paths, compute) if state_keys == ("qpos",) else compute()
    return DatasetBundle(
        train=train,
        val=val,
        stats=stats,
        state_dim=train.state_dim,
        action_dim=train.action_dim,
        image_shape=tuple(train.image_shape) if train.image_shape else None,
        train_episodes=train.episode_paths,
        val_episodes=val.episode_paths if val else [],
        skipped=skipped,
    )
