"""Small VLAAgent builders and batches shared by the agent tests (DDPM and iMF): two 32x32 cameras, a 3-dim state
with one constant dimension, a 2-dim action."""
import functools

import numpy as np
import torch

from roboimi.vla.agent import VLAAgent
from roboimi.vla.models.backbones.resnet_diffusion import ResNetDiffusionBackbone
from roboimi.vla.models.heads.transformer1d import Transformer1D

CAMS = ("top", "front")
OBS_DIM, ACTION_DIM, OBS_HORIZON, PRED_HORIZON, NUM_ACTION_STEPS = 3, 2, 2, 8, 3
STATS = {
    "qpos_min": np.array([0.0, -2.0, 5.0], dtype=np.float32),
    "qpos_max": np.array([10.0, 2.0, 5.0], dtype=np.float32),  # last dimension is constant
    "action_min": np.array([10.0, -5.0], dtype=np.float32),
    "action_max": np.array([20.0, -1.0], dtype=np.float32),
    "qpos_mean": np.zeros(3, dtype=np.float32),  # informational keys of the dataset stats are ignored
    "action_std": np.ones(2, dtype=np.float32),
}


def make_agent(stats=STATS, backbone_cams=CAMS, image_size=32, **kwargs):
    torch.manual_seed(0)
    backbone = ResNetDiffusionBackbone(
        input_shape=(image_size, image_size), camera_names=backbone_cams, spatial_softmax_num_keypoints=4
    )
    head = functools.partial(
        Transformer1D, n_layer=1, n_head=2, n_emb=16, p_drop_emb=0.0, p_drop_attn=0.0, causal_attn=True
    )
    args = dict(
        action_dim=ACTION_DIM,
        obs_dim=OBS_DIM,
        obs_horizon=OBS_HORIZON,
        pred_horizon=PRED_HORIZON,
        num_action_steps=NUM_ACTION_STEPS,
        inference_steps=4,
        camera_names=CAMS,
        normalization_stats=stats,
    )
    args.update(kwargs)
    return VLAAgent(backbone, head, **args)


def make_batch(batch=2, image_size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    low, high = torch.from_numpy(STATS["action_min"]), torch.from_numpy(STATS["action_max"])
    return {
        "images": {
            cam: torch.randint(0, 256, (batch, OBS_HORIZON, 3, image_size, image_size), generator=g, dtype=torch.uint8)
            for cam in CAMS
        },
        "qpos": torch.rand(batch, OBS_HORIZON, OBS_DIM, generator=g) * 10,
        "action": low + (high - low) * torch.rand(batch, PRED_HORIZON, ACTION_DIM, generator=g),
        "action_is_pad": torch.zeros(batch, PRED_HORIZON, dtype=torch.bool),
    }


def make_obs(value, size=32):
    return {
        "qpos": np.full(OBS_DIM, float(value)),
        "images": {cam: np.full((size, size, 3), value, dtype=np.uint8) for cam in CAMS},
    }


class HeadCalls:
    """Records the positional arguments of every head forward."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(lambda _, args: self.calls.append(args))
