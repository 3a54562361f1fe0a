"""The vision backbone of a state-only agent: no cameras, no features, so the condition is the state alone."""
from collections.abc import Sequence

from torch import nn


class NoVisionBackbone(nn.Module):
    """Stands in for a camera encoder when data.camera_names is empty; the agent never calls it."""

    def __init__(self, camera_names: Sequence[str] = ()):
        super().__init__()
        if camera_names:
            raise ValueError(
                f"NoVisionBackbone encodes no cameras but got camera_names={list(camera_names)}. Use "
                "data.camera_names=[] for a state-only agent, or a camera backbone (agent/vision_backbone=resnet18)."
            )
        self.camera_names = ()
        self.num_cameras = 0
        self.output_dim = 0
        self.input_shape = None
