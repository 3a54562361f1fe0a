"""What a policy observes, in one place: its cameras, the image size its encoder takes, and the state layout.

The agent owns one ObservationSpec, built from its config (so every checkpoint carries it) and checked at the
agent's boundary; the dataset builder reads episodes by it and the evaluator renders and assembles observations by
it. Images are resized in one place only: when the dataset reads them (data.image_resize_shape), so a policy is fed
at the size its encoder was built for and the evaluator renders at that size.
"""
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ObservationSpec:
    camera_names: tuple[str, ...]  # concatenated in this order; () for a state-only policy
    image_shape: tuple[int, int] | None  # (H, W) of the frames the encoder takes; None without cameras
    state_keys: tuple[str, ...]  # env observation / HDF5 /observations entries, concatenated in this order

    def __post_init__(self):
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        object.__setattr__(self, "state_keys", tuple(self.state_keys))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        if not self.state_keys:
            raise ValueError("An observation needs at least one state key (e.g. data.state_keys=[qpos]).")
        if self.camera_names and (self.image_shape is None or len(self.image_shape) != 2):
            raise ValueError(
                f"Cameras {list(self.camera_names)} need an image shape [H, W], got {self.image_shape}. Set "
                "data.image_shape (train_vla.py fills it from the dataset files)."
            )

    def state(self, source: Mapping[str, np.ndarray], where: str = "The observation") -> np.ndarray:
        return assemble_state(source, self.state_keys, where)

    def check_images(self, images: Mapping, where: str, channels_last: bool = False) -> None:
        """Every camera present at the spec's (H, W); a named error otherwise.

        `images[cam]`: (..., 3, H, W) batches, or with channels_last (H, W, 3) env frames.
        """
        missing = [cam for cam in self.camera_names if cam not in images]
        if missing:
            raise ValueError(
                f"{where} is missing camera(s) {missing}; it has {sorted(images)} but the policy was built for "
                f"camera_names={list(self.camera_names)}. Provide every camera, or train with matching "
                "data.camera_names."
            )
        for cam in self.camera_names:
            shape = tuple(images[cam].shape)
            hw = shape[-3:-1] if channels_last else shape[-2:]
            if hw != self.image_shape:
                raise ValueError(
                    f"{where}: camera {cam!r} has frames of {list(hw)} (shape {list(shape)}) but the policy's "
                    f"encoder takes {list(self.image_shape)}. Render at that size, or resize the data to it with "
                    "data.image_resize_shape when training."
                )

    def as_dict(self) -> dict:
        return {
            "camera_names": list(self.camera_names),
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "state_keys": list(self.state_keys),
        }



def assemble_state(source: Mapping[str, np.ndarray], state_keys: Sequence[str], where: str) -> np.ndarray:
    """The one state-assembly rule, for env observations and recorded episodes alike:
    source[key] (..., d_key) for each key in order -> float32 (..., sum d_key)."""
    missing = [key for key in state_keys if key not in source]
    if missing:
        raise KeyError(
            f"{where} lacks state key(s) {missing}; it has {sorted(source)}. The policy was trained with "
            f"state_keys={list(state_keys)}: provide them, or train with state keys it has."
        )
    return np.concatenate([np.asarray(source[key], dtype=np.float32) for key in state_keys], axis=-1)
