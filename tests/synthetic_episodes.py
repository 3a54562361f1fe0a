"""Tiny synthetic episodes in the ACT HDF5 layout, for tests.

Every value encodes where it came from, so a test can tell which frame of which episode it read:

    qpos[t, j]                 = 1000 * seed + t + j / 100
    action[t, j]               = 1000 * seed + t + j / 100 + 0.5
    qvel[t, j]                 = -t
    images[cam][t, :, :, 0]    = t % 256
    images[cam][t, :, :, 1]    = position of cam in camera_names
    images[cam][t, :, :, 2]    = seed % 256

Usage:
    from tests.synthetic_episodes import write_dataset, write_episode
    paths = write_dataset(tmpdir, lengths=(20, 24, 30))  # episode_0..2.hdf5 with seeds 0..2
"""

import os

import numpy as np

from roboimi.vla.data.episode_files import write_episode_file


def write_episode(
    path,
    length,
    state_dim=14,
    action_dim=14,
    camera_names=("r_vis", "top", "front"),
    image_size=(32, 32),
    seed=0,
    with_qvel=True,
):
    """Write one episode with the per-frame encoding above; images are (length, *image_size, 3). Returns path."""
    frames = np.arange(length, dtype=np.float64)[:, None]
    qpos = 1000 * seed + frames + np.arange(state_dim) / 100
    action = 1000 * seed + frames + np.arange(action_dim) / 100 + 0.5
    images = {}
    for position, cam in enumerate(camera_names):
        pixels = np.empty((length, *image_size, 3), dtype=np.uint8)
        pixels[..., 0] = (np.arange(length) % 256)[:, None, None]
        pixels[..., 1] = position
        pixels[..., 2] = seed % 256
        images[cam] = pixels
    extra = {"qvel": -np.repeat(frames, state_dim, axis=1)} if with_qvel else None
    return write_episode_file(path, qpos.astype(np.float32), action.astype(np.float32), images, extra)


def write_dataset(dirpath, lengths=(20, 24, 30), **kw):
    """Write episode_<i>.hdf5 for each length, episode i with seed i; kw go to write_episode. Returns the paths."""
    os.makedirs(dirpath, exist_ok=True)
    return [
        write_episode(os.path.join(dirpath, f"episode_{i}.hdf5"), length, seed=i, **kw)
        for i, length in enumerate(lengths)
    ]
