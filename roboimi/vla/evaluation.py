"""Rollout evaluation of an agent in a built-in task: the bridge between the agent and roboimi.envs.

Used by training-time rollout validation and by eval_vla.py, so both score policies the same way.
"""
import torch
from torch import nn


def evaluate_agent(agent: nn.Module, cfg, *, num_episodes: int, output_dir, record_video: bool, progress: bool = True) -> dict:
    """Run `num_episodes` seeded episodes of `cfg.eval.task`; returns the evaluator's summary dict."""
    # Imported here: importing the simulator fixes the MuJoCo GL backend, which training without rollouts never needs.
    from roboimi.envs.rollout import evaluate_policy

    was_training = agent.training
    agent.eval()
    try:
        with torch.no_grad():
            return evaluate_policy(
                agent,
                task=cfg.eval.task,
                num_episodes=num_episodes,
                seed=cfg.eval.seed,
                image_size=tuple(cfg.data.image_shape),
                camera_names=tuple(cfg.data.camera_names),
                max_timesteps=cfg.eval.max_timesteps,
                output_dir=output_dir,
                record_video=record_video,
                video_camera=cfg.eval.video_camera,
                trajectory_image=cfg.eval.trajectory_image,
                trajectory_camera=cfg.eval.trajectory_camera,
                progress=progress,
            )
    finally:
        agent.train(was_training)
        agent.reset()
