"""A three-layer conv trunk for low-resolution cameras on a CPU budget.

At 96x96 it costs about 1/18 of a ResNet-18 per image (9 M multiply-adds) and keeps a 24x24 feature map
(ResNet-18: 3x3), so the spatial softmax after it localises small objects (the sim cube is ~3 px wide) to a
fraction of a pixel. No normalization layers: nothing to tune for batch size or train/eval mode.
"""
from torch import nn


class SmallConvTrunk(nn.Sequential):
    """(N, 3, H, W) -> (N, channels, H/4, W/4): two stride-2 3x3 convs, then one 3x3 conv at H/4."""

    def __init__(self, channels: int = 32):
        super().__init__(
            nn.Conv2d(3, channels // 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
        )
