"""Rollout evaluation of an agent in a built-in task: the bridge between the agent and roboimi.envs.

Used by training-time rollout validation and by eval_vla.py, so both score policies the same way.
"""
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from roboimi.vla.fast_paths import attention_backends, bf16_autocast

# A state-only agent renders no cameras; this size serves its trajectory images and videos.
NO_CAMERA_RENDER_SIZE = (96, 96)


class AgentPolicy:
    """The rollout-side view of an agent: state-key concatenation and the inference fast paths, per call.

    The env observes {'qpos': (14,), 'qvel': (14,), 'env_state': (E,), 'images': ...}; an agent trained with
    data.state_keys=[qpos, env_state] expects obs['qpos'] of 14 + E dims, in the dataset's order. The fast
    paths are entered inside `select_action`, so they hold in whichever rollout process calls it.
    """

    def __init__(self, agent: nn.Module, state_keys: Sequence[str], fused_sdpa=False, bf16_autocast=False):
        self.agent = agent
        self.state_keys = tuple(state_keys)
        self.fused_sdpa = fused_sdpa
        self.bf16_autocast = bf16_autocast

    @property
    def last_preprocess_ms(self) -> float:
        return self.agent.last_preprocess_ms

    @property
    def training(self) -> bool:
        return self.agent.training

    def eval(self) -> None:
        self.agent.eval()

    def train(self, mode: bool = True) -> None:
        self.agent.train(mode)

    def reset(self) -> None:
        self.agent.reset()

    def select_action(self, obs: Mapping) -> torch.Tensor:
        missing = [key for key in self.state_keys if key not in obs]
        if missing:
            raise KeyError(
                f"The observation lacks state key(s) {missing}; it has {sorted(obs)}. Evaluate in an env that "
                f"provides them, or train with data.state_keys among those."
            )
        state = np.concatenate([np.asarray(obs[key], dtype=np.float32).reshape(-1) for key in self.state_keys])
        device = next(self.agent.parameters()).device
        with attention_backends(self.fused_sdpa, device), bf16_autocast(self.bf16_autocast, device):
            return self.agent.select_action({**obs, "qpos": state})


def evaluate_agent(
    agent: nn.Module, cfg, *, num_episodes: int, output_dir, record_video: bool, progress: bool = True
) -> dict:
    """Run `num_episodes` seeded episodes of `cfg.eval.task` in `cfg.eval.num_workers` processes.

    Returns the evaluator's summary dict; the evaluator restores the agent's train/eval mode and empties its queues.
    """
    # Imported here: importing the simulator fixes the MuJoCo GL backend, which training without rollouts never needs.
    from roboimi.envs.rollout import evaluate_policy

    image_size = tuple(cfg.data.image_shape) if cfg.data.camera_names else NO_CAMERA_RENDER_SIZE
    policy = AgentPolicy(
        agent,
        cfg.data.state_keys,
        fused_sdpa=cfg.eval.fused_sdpa,
        bf16_autocast=cfg.eval.bf16_autocast,
    )
    return evaluate_policy(
        policy,
        task=cfg.eval.task,
        num_episodes=num_episodes,
        seed=cfg.eval.seed,
        image_size=image_size,
        camera_names=tuple(cfg.data.camera_names),
        max_timesteps=cfg.eval.max_timesteps,
        output_dir=output_dir,
        record_video=record_video,
        video_camera=cfg.eval.video_camera,
        video_size=tuple(cfg.eval.video_size),
        video_episodes=cfg.eval.video_episodes,
        trajectory_image=cfg.eval.trajectory_image,
        trajectory_camera=cfg.eval.trajectory_camera,
        progress=progress,
        num_workers=cfg.eval.num_workers,
    )
