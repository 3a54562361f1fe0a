"""Episode files in the ACT HDF5 layout: discovery, validation and writing.

One file per episode, `<dataset_dir>/episode_<i>.hdf5`:

    attrs                        sim=True (recordings may add task, seed, success, fps)
    /observations/qpos           (T, S) float    joint state
    /observations/qvel           (T, S) float    optional
    /observations/env_state      (T, E) float    optional object pose(s) from the simulator
    /observations/images/<cam>   (T, H, W, 3)    uint8, one-frame chunks, gzip 1 or lzf
    /action                      (T, A) float    action aligned with obs[t]

Every problem with a dataset directory is detected here, before any training starts, and reported with
the fix. Unreadable episodes and episodes too short for the observation window are skipped with a
warning; inconsistent episodes are errors because silently dropping them would hide a broken recording.
"""

import errno
import io
import os
import re
import shlex
import warnings
from dataclasses import dataclass

import h5py
import numpy as np

from roboimi.atomic_file import atomic_write_path

EPISODE_PATTERN = re.compile(r"^episode_(\d+)\.hdf5$")
COMPRESSIONS = ("gzip", "lzf")  # image dataset filters the writer supports
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a full quota, a file-size limit


class NoSpaceError(OSError):
    """The file system had no room for a file of `needed` bytes (a full disk, a full quota or a file-size limit)."""

    def __init__(self, errno_: int, strerror: str, filename, needed: int):
        super().__init__(errno_, strerror, filename)
        self.needed = needed


def record_command(dataset_dir) -> str:
    """The recorder's command line for `dataset_dir`, safe to paste into a shell whatever the path holds.

    The value is quoted twice: for Hydra's override grammar (in single quotes unless plain) and for the shell.
    """
    value = str(dataset_dir)
    if not re.fullmatch(r"[\w/.\-]+", value):
        # Hydra unescapes backslashes only before a quote: double those runs, escape the quotes.
        value = "'" + re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), value) + "'"
    return f"python roboimi/demos/record_sim_episodes.py task=sim_transfer {shlex.quote('dataset_dir=' + value)}"


@dataclass(frozen=True)
class EpisodeInfo:
    path: str
    index: int  # the <i> of episode_<i>.hdf5
    length: int  # T
    state_dim: int  # S, summed over the state keys
    action_dim: int  # A
    image_shapes: dict  # camera -> (H, W, 3)


def find_episode_files(dataset_dir):
    """Paths of `episode_<i>.hdf5` in `dataset_dir`, sorted numerically by i."""
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(
            f"Dataset directory '{dataset_dir}' does not exist. Record the built-in dataset with "
            f"`{record_command(dataset_dir)}` or point data.dataset_dir at an existing "
            f"directory of episode_<i>.hdf5 files."
        )
    indexed = []
    for name in os.listdir(dataset_dir):
        match = EPISODE_PATTERN.match(name)
        if match:
            indexed.append((int(match.group(1)), os.path.join(dataset_dir, name)))
    if not indexed:
        raise FileNotFoundError(
            f"Dataset directory '{dataset_dir}' contains no episode_<i>.hdf5 files. Record episodes into it with "
            f"`{record_command(dataset_dir)}` or point data.dataset_dir at the directory "
            f"that holds them."
        )
    return [path for _, path in sorted(indexed)]


def episode_index(path):
    return int(EPISODE_PATTERN.match(os.path.basename(path)).group(1))


def _state_dim(f, path, state_keys, length):
    """Width of the policy state: the `/observations/<key>` datasets of `state_keys`, concatenated in order."""
    available = sorted(key for key, item in f["observations"].items() if isinstance(item, h5py.Dataset))
    missing = [key for key in state_keys if key not in available]
    if missing:
        raise ValueError(
            f"State key(s) {missing} not found in '{path}'. Available /observations datasets: {available}. "
            f"Choose keys that exist with data.state_keys=[{','.join(available)}] (or a subset, qpos first)."
        )
    for key in state_keys:
        values = f[f"observations/{key}"]
        if values.ndim != 2 or values.shape[0] != length:
            raise ValueError(
                f"Episode file '{path}': /observations/{key} has shape {values.shape}; a state key needs "
                f"(T, dim) with T = {length} frames like /action. Remove '{key}' from data.state_keys."
            )
    return sum(f[f"observations/{key}"].shape[1] for key in state_keys)


def _require_finite(f, path, keys):
    """Name the file, dataset and first frame holding NaN or inf: such a value would poison the stats and the loss."""
    for key in keys:
        values = f[key][()]
        bad_frames = np.flatnonzero(~np.isfinite(values).all(axis=tuple(range(1, values.ndim))))
        if bad_frames.size:
            raise ValueError(
                f"Episode file '{path}': /{key} holds NaN or inf, first at frame {bad_frames[0]} "
                f"({bad_frames.size} frame(s) in all). Re-record the episode or remove it from the dataset directory."
            )


def read_episode_info(path, camera_names, state_keys=("qpos",)):
    """Metadata of one episode. Raises OSError if HDF5 cannot read the file, ValueError if the layout is wrong."""
    if not state_keys:
        raise ValueError("state_keys is empty. Name at least one /observations dataset, e.g. data.state_keys=[qpos].")
    with h5py.File(path, "r") as f:
        for key in ("observations/qpos", "action"):
            if key not in f:
                raise ValueError(
                    f"Episode file '{path}' has no '/{key}' dataset, so it is not in the ACT layout "
                    f"(/observations/qpos, /observations/images/<cam>, /action). Re-record it or remove it "
                    f"from the dataset directory."
                )
        qpos, action = f["observations/qpos"], f["action"]
        if qpos.ndim != 2 or action.ndim != 2:
            raise ValueError(
                f"Episode file '{path}': /observations/qpos {qpos.shape} and /action {action.shape} must both "
                f"be 2-D (T, dim). Re-record it or remove it from the dataset directory."
            )
        if qpos.shape[0] != action.shape[0]:
            raise ValueError(
                f"Episode file '{path}': /observations/qpos has {qpos.shape[0]} frames but /action has "
                f"{action.shape[0]}; they must be aligned frame by frame. Re-record the episode or truncate "
                f"both to the same length."
            )
        available = sorted(f["observations/images"].keys()) if "observations/images" in f else []
        missing = [cam for cam in camera_names if cam not in available]
        if missing:
            raise ValueError(
                f"Camera(s) {missing} not found in '{path}'. Available cameras: {available}. Choose cameras "
                f"that exist with data.camera_names=[{','.join(available)}] (or a subset)."
            )
        image_shapes = {}
        for cam in camera_names:
            images = f[f"observations/images/{cam}"]
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                raise ValueError(
                    f"Episode file '{path}': camera '{cam}' holds {images.dtype} {images.shape}; expected uint8 "
                    f"(T, H, W, 3). Re-record the episode."
                )
            if images.shape[0] != qpos.shape[0]:
                raise ValueError(
                    f"Episode file '{path}': camera '{cam}' has {images.shape[0]} frames but "
                    f"/observations/qpos has {qpos.shape[0]}. Re-record the episode."
                )
            image_shapes[cam] = tuple(images.shape[1:])
        state_dim = _state_dim(f, path, state_keys, qpos.shape[0])
        _require_finite(f, path, ["action", *(f"observations/{key}" for key in state_keys)])
        return EpisodeInfo(
            path=path,
            index=episode_index(path),
            length=qpos.shape[0],
            state_dim=state_dim,
            action_dim=action.shape[1],
            image_shapes=image_shapes,
        )


def _check_consistent(episodes, camera_names, same_image_size=True):
    reference = episodes[0]
    for field in ("state_dim", "action_dim"):
        groups = {}
        for episode in episodes:
            groups.setdefault(getattr(episode, field), []).append(os.path.basename(episode.path))
        if len(groups) > 1:
            listing = "; ".join(f"{dim}: {names}" for dim, names in groups.items())
            raise ValueError(
                f"Episodes disagree on {field} ({listing}). All episodes of a dataset must share one state and "
                f"action layout; move the odd files to a separate dataset directory."
            )
    for cam in camera_names if same_image_size else ():
        for episode in episodes:
            if episode.image_shapes[cam] != reference.image_shapes[cam]:
                raise ValueError(
                    f"Camera '{cam}' has image shape {episode.image_shapes[cam]} in '{episode.path}' but "
                    f"{reference.image_shapes[cam]} in '{reference.path}'. Resize them to one size on read with "
                    f"data.image_resize_shape=[H,W], or move the odd files to a separate dataset directory."
                )


def check_camera_shapes_agree(episode, camera_names):
    """The policy sees one image size; cameras of different sizes need an explicit resize."""
    shapes = {cam: episode.image_shapes[cam][:2] for cam in camera_names}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"Cameras have different image sizes {shapes} in '{episode.path}'. Resize them to one size at load "
            f"time with data.image_resize_shape=[H,W]."
        )


def discover_episodes(dataset_dir, camera_names, obs_horizon, state_keys=("qpos",), same_image_size=True):
    """Validated episodes of `dataset_dir` plus the skipped ones. An empty `camera_names` means state only.
    `same_image_size=False` (images resized on read) lets episodes differ in image size.

    Returns (episodes: list[EpisodeInfo] sorted by index, skipped: list[(path, reason)]).
    """
    episodes, skipped = [], []
    for path in find_episode_files(dataset_dir):
        try:
            info = read_episode_info(path, camera_names, state_keys)
        except OSError as error:
            skipped.append((path, f"unreadable HDF5 file ({error}); delete or re-record it"))
            continue
        if info.length < obs_horizon:
            skipped.append(
                (path, f"{info.length} frames, fewer than obs_horizon={obs_horizon}; re-record it or lower obs_horizon")
            )
            continue
        episodes.append(info)
    if skipped:
        details = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        warnings.warn(f"Skipped {len(skipped)} episode file(s) in '{dataset_dir}':\n{details}", stacklevel=2)
    if not episodes:
        raise ValueError(
            f"No usable episodes left in '{dataset_dir}' after skipping {len(skipped)} file(s) (reasons above). "
            f"Re-record the dataset with `{record_command(dataset_dir)}`."
        )
    _check_consistent(episodes, camera_names, same_image_size)
    return episodes, skipped


def write_episode_file(path, qpos, action, images, extra_observations=None, attrs=None, compression="gzip"):
    """Write one episode in the ACT layout, atomically (temporary file, then rename).

    qpos (T, S), action (T, A), images: camera -> uint8 (T, H, W, 3), extra_observations: name -> (T, ...)
    (e.g. qvel, env_state), attrs: file attributes besides sim=True.
    Images get one-frame chunks so that reading a window decompresses only the frames it needs.
    Raises NoSpaceError, with the file's size, when the file system has no room for it; no temporary file remains.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}.")
    options = {"compression": "gzip", "compression_opts": 1} if compression == "gzip" else {"compression": "lzf"}
    # HDF5 builds the file in memory and Python writes it out: HDF5 reports a failed write onto a full disk as late as
    # when the file closes, and that close then crashes the interpreter (h5py 3.16, HDF5 2.0: SIGSEGV in H5Fclose).
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        f.attrs["sim"] = True
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        obs = f.create_group("observations")
        obs.create_dataset("qpos", data=qpos)
        for name, values in (extra_observations or {}).items():
            obs.create_dataset(name, data=values)
        image_group = obs.create_group("images")
        for cam, frames in images.items():
            image_group.create_dataset(cam, data=frames, chunks=(1,) + frames.shape[1:], **options)
        f.create_dataset("action", data=action)
    data = image.getbuffer()
    try:
        with atomic_write_path(path) as tmp_path:
            tmp_path.write_bytes(data)
    except OSError as error:
        if error.errno not in NO_SPACE_ERRNOS:
            raise
        raise NoSpaceError(error.errno, error.strerror, str(path), data.nbytes) from None
    return path
