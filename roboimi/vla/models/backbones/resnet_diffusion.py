"""Multi-camera encoder of Diffusion Policy: per camera a conv trunk (a torchvision ResNet, or SmallConvTrunk on a
CPU budget), spatial-softmax keypoints and a small projection; camera features are concatenated in `camera_names`
order.

Module names (`backbone`, `pool`, `out`, `nets`) follow lerobot's DiffusionRgbEncoder so checkpoints map 1:1.
"""
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

from roboimi.vla.models.backbones.small_cnn import SmallConvTrunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpatialSoftmax(nn.Module):
    """Keypoints as softmax-weighted expected (x, y) positions of K learned 1x1-conv feature maps.

    The coordinate grid spans [-1, 1] along each axis; `pos_grid[h * W + w] = (x_w, y_h)` (x first).
    With `temperature` the logits are divided by a learned temperature that starts there. A small object (a few
    pixels of a 24x24 map) moves the keypoint of a near-uniform softmax by almost nothing; a low starting temperature
    makes the maps peaked enough to track it from the first steps. None keeps the plain softmax (and the
    parameter-free module of pretrained checkpoints).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_kp: int = 32, temperature: float | None = None):
        super().__init__()
        channels, height, width = input_shape
        self.num_kp = num_kp
        self.nets = nn.Conv2d(channels, num_kp, kernel_size=1)
        if temperature is not None and temperature <= 0:
            raise ValueError(f"spatial_softmax_temperature={temperature} must be > 0, or null for the plain softmax.")
        self.log_inverse_temperature = (
            None if temperature is None else nn.Parameter(torch.tensor(-math.log(temperature)))
        )
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )
        self.register_buffer("pos_grid", torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: (B, C, H, W) -> keypoints (B, K, 2)
        logits = self.nets(features).flatten(2)  # (B, K, H*W)
        if self.log_inverse_temperature is not None:
            logits = logits * self.log_inverse_temperature.exp()
        attention = torch.softmax(logits, dim=-1)
        return attention @ self.pos_grid


def _replace_batchnorm_with_groupnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(num_groups=channels // 16, num_channels=channels))
        else:
            _replace_batchnorm_with_groupnorm(child)


def _load_local_resnet_weights(resnet: nn.Module, path: str) -> None:
    """Load a torchvision ResNet state dict from a local file; the classifier (`fc.*`) is ignored."""
    fix = (
        "ImageNet weights cannot be downloaded on these machines: copy a torchvision resnet state dict "
        "(e.g. resnet18-f37072fd.pth) to that path, or set "
        "agent.vision_backbone.pretrained_backbone_weights=null for random initialisation."
    )
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained_backbone_weights={path!r} is not a file. {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = resnet.load_state_dict(state, strict=False)
    except Exception as err:
        raise RuntimeError(f"Could not load pretrained_backbone_weights={path!r}: {err}. {fix}") from err
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise RuntimeError(
            f"pretrained_backbone_weights={path!r} does not match the trunk: missing keys {missing}, "
            f"unexpected keys {unexpected}. {fix}"
        )


def _build_trunk(vision_backbone: str, pretrained_backbone_weights: str | None, use_group_norm: bool) -> nn.Module:
    """`small_cnn` (SmallConvTrunk) or a torchvision ResNet name (e.g. resnet18) without avgpool and fc.

    `use_group_norm`: a GroupNorm after each conv of SmallConvTrunk; a ResNet's BatchNorms are replaced by the caller.
    """
    if vision_backbone == "small_cnn":
        if pretrained_backbone_weights is not None:
            raise ValueError(
                "vision_backbone=small_cnn has no pretrained weights; set "
                "agent.vision_backbone.pretrained_backbone_weights=null or use a ResNet."
            )
        return SmallConvTrunk(group_norm=use_group_norm)
    if not vision_backbone.startswith("resnet") or not hasattr(torchvision.models, vision_backbone):
        raise ValueError(
            f"Unknown vision_backbone={vision_backbone!r}: use small_cnn or a torchvision ResNet (resnet18, resnet34)."
        )
    resnet = getattr(torchvision.models, vision_backbone)(weights=None)
    if pretrained_backbone_weights is not None:
        _load_local_resnet_weights(resnet, pretrained_backbone_weights)
    return nn.Sequential(*list(resnet.children())[:-2])  # drop avgpool and fc


class _SingleRgbEncoder(nn.Module):
    """One camera: crop -> (ImageNet norm) -> conv trunk -> SpatialSoftmax -> Linear + ReLU."""

    def __init__(
        self,
        vision_backbone: str,
        pretrained_backbone_weights: str | None,
        freeze_backbone: bool,
        spatial_softmax_num_keypoints: int,
        spatial_softmax_temperature: float | None,
        use_group_norm: bool,
        crop_shape: tuple[int, int] | None,
        crop_is_random: bool,
        input_shape: tuple[int, int],
    ):
        super().__init__()
        if use_group_norm and pretrained_backbone_weights is not None:
            raise ValueError(
                "use_group_norm=true replaces the BatchNorm layers that pretrained_backbone_weights="
                f"{pretrained_backbone_weights!r} were trained with. Use use_group_norm=false with pretrained "
                "weights, or pretrained_backbone_weights=null with GroupNorm."
            )
        self.freeze_backbone = freeze_backbone

        if crop_shape:
            self.center_crop = transforms.CenterCrop(list(crop_shape))
            self.random_crop = transforms.RandomCrop(list(crop_shape)) if crop_is_random else self.center_crop
        else:
            self.center_crop = self.random_crop = None
        if pretrained_backbone_weights is not None:
            self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        else:
            self.image_mean = self.image_std = None

        self.backbone = _build_trunk(vision_backbone, pretrained_backbone_weights, use_group_norm)
        if use_group_norm:
            _replace_batchnorm_with_groupnorm(self.backbone)
        if freeze_backbone:
            self.backbone.requires_grad_(False)

        # Eval mode for the dry run: a 1x1 feature map (tiny images) breaks BatchNorm in train mode.
        was_training = self.training
        self.eval()
        with torch.no_grad():
            feature_shape = self.backbone(self._preprocess(torch.zeros(1, 3, *input_shape))).shape[1:]
        self.train(was_training)

        self.pool = SpatialSoftmax(
            tuple(feature_shape), num_kp=spatial_softmax_num_keypoints, temperature=spatial_softmax_temperature
        )
        self.output_dim = 2 * spatial_softmax_num_keypoints
        self.out = nn.Linear(self.output_dim, self.output_dim)
        self.relu = nn.ReLU()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics must not drift with the training data
        return self

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.center_crop is not None:
            x = self.random_crop(x) if self.training else self.center_crop(x)
        if self.image_mean is not None:
            x = (x - self.image_mean) / self.image_std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) float in [0, 1] -> (N, output_dim)
        keypoints = self.pool(self.backbone(self._preprocess(x)))  # (N, K, 2)
        return self.relu(self.out(keypoints.flatten(1)))


class ResNetDiffusionBackbone(nn.Module):
    """Encodes a dict of camera videos into one feature vector per time step.

    The agent's observation spec checks cameras and image size before the images get here. With
    `camera_dropout` > 0 each training sample loses each camera's features (all its frames) with that probability,
    the rest scaled by 1 / (1 - p) as in dropout, so that no single view can carry the policy alone.
    """

    def __init__(
        self,
        vision_backbone: str = "resnet18",
        pretrained_backbone_weights: str | None = None,
        freeze_backbone: bool = False,
        use_separate_rgb_encoder_per_camera: bool = True,
        spatial_softmax_num_keypoints: int = 32,
        spatial_softmax_temperature: float | None = None,
        use_group_norm: bool = False,
        crop_shape: Sequence[int] | None = None,
        crop_is_random: bool = True,
        camera_names: Sequence[str] = ("r_vis", "top", "front"),
        input_shape: Sequence[int] | None = (96, 96),
        camera_dropout: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= camera_dropout < 1.0:
            raise ValueError(f"camera_dropout={camera_dropout} must be in [0, 1); 0 turns it off.")
        if input_shape is None or len(input_shape) != 2:
            raise ValueError(
                f"input_shape={input_shape!r} must be the [H, W] of the camera images; it sizes the "
                "spatial softmax. Set data.image_shape=[H,W] (train_vla.py fills it from the dataset files)."
            )
        self.camera_names = tuple(camera_names)
        self.num_cameras = len(self.camera_names)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.use_separate_rgb_encoder_per_camera = use_separate_rgb_encoder_per_camera
        self.camera_dropout = camera_dropout

        def make_encoder() -> _SingleRgbEncoder:
            return _SingleRgbEncoder(
                vision_backbone=vision_backbone,
                pretrained_backbone_weights=pretrained_backbone_weights,
                freeze_backbone=freeze_backbone,
                spatial_softmax_num_keypoints=spatial_softmax_num_keypoints,
                spatial_softmax_temperature=spatial_softmax_temperature,
                use_group_norm=use_group_norm,
                crop_shape=tuple(crop_shape) if crop_shape else None,
                crop_is_random=crop_is_random,
                input_shape=self.input_shape,
            )

        if use_separate_rgb_encoder_per_camera:
            self.rgb_encoder = nn.ModuleList([make_encoder() for _ in self.camera_names])
            self.output_dim = self.rgb_encoder[0].output_dim
        else:
            self.rgb_encoder = make_encoder()
            self.output_dim = self.rgb_encoder.output_dim

    def forward(self, images: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # images: {cam: (B, T, 3, H, W) float in [0, 1]} -> (B, T, num_cameras * output_dim)
        batch, steps = images[self.camera_names[0]].shape[:2]
        if self.use_separate_rgb_encoder_per_camera:
            features = torch.stack(
                [
                    encoder(images[cam].flatten(0, 1)).view(batch, steps, -1)
                    for cam, encoder in zip(self.camera_names, self.rgb_encoder)
                ],
                dim=1,
            )  # (B, N, T, output_dim)
        else:
            stacked = torch.stack([images[cam] for cam in self.camera_names], dim=1)  # (B, N, T, 3, H, W)
            features = self.rgb_encoder(stacked.flatten(0, 2)).view(batch, self.num_cameras, steps, -1)
        if self.camera_dropout > 0:
            # dropout1d zeroes whole channels of (B, C, L): here a camera's features at all T steps
            features = nn.functional.dropout1d(
                features.flatten(2), self.camera_dropout, training=self.training
            ).view_as(features)
        return features.permute(0, 2, 1, 3).reshape(batch, steps, self.num_cameras * self.output_dim)
