"""Rollout evaluation of an agent in a built-in task: the bridge between the agent and roboimi.envs.

Used by training-time rollout validation and by eval_vla.py, so both score policies the same way.
"""
import multiprocessing
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor

import torch
from torch import nn

from roboimi.vla.fast_paths import attention_backends, precision_autocast
from roboimi.worker_process import init_worker_process

# A state-only agent renders no cameras; this size serves its trajectory images and videos.
NO_CAMERA_RENDER_SIZE = (96, 96)


def policy_name(agent_cfg) -> str:
    """IMF-<steps> or DDIM-<steps>: the agent's action generator and its sampling steps, as reports name it."""
    family = "IMF" if agent_cfg["_target_"].endswith("IMFVLAAgent") else "DDIM"
    return f"{family}-{agent_cfg['inference_steps']}"


class AgentPolicy:
    """The rollout-side view of an agent: its `select_action` inside the inference fast paths.

    The fast paths are entered per call, so they hold in whichever rollout process calls it; the agent assembles
    its state from the env observation by its observation spec.
    """

    def __init__(self, agent: nn.Module, fused_sdpa=False, precision="fp32"):
        self.agent = agent
        self.fused_sdpa = fused_sdpa
        self.precision = precision

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
        device = next(self.agent.parameters()).device
        with attention_backends(self.fused_sdpa, device), precision_autocast(self.precision, device):
            return self.agent.select_action(obs)


def evaluate_agent(
    agent: nn.Module, cfg, *, num_episodes: int, seed: int, output_dir, record_video: bool, progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Run `num_episodes` episodes of `cfg.eval.task` (episode i with seed `seed + i`) in `cfg.eval.num_workers`
    processes, until `should_stop()` (see evaluate_policy).

    Returns the evaluator's summary dict; the evaluator restores the agent's train/eval mode and empties its queues.
    """
    # Imported here: importing the simulator fixes the MuJoCo GL backend, which training without rollouts never needs.
    from roboimi.evaluation.rollout import evaluate_policy

    spec = agent.observation_spec
    policy = AgentPolicy(agent, fused_sdpa=cfg.eval.fused_sdpa, precision=cfg.eval.precision)
    return evaluate_policy(
        policy,
        task=cfg.eval.task,
        num_episodes=num_episodes,
        seed=seed,
        image_size=spec.image_shape or NO_CAMERA_RENDER_SIZE,
        camera_names=spec.camera_names,
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
        should_stop=should_stop,
    )


def evaluate_agent_in_subprocess(agent: nn.Module, cfg, **kwargs) -> dict:
    """`evaluate_agent(agent, cfg, **kwargs)` run in a fresh spawned process, which takes a copy of the agent.

    The simulator, its GL context and their memory stay out of the calling process: a training run's rollout
    validation loads them anew each time and frees them after, so the trainer's resident memory stays flat over a
    long run, and the trainer's RNG streams are not touched.
    """
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker_process,
        initargs=(torch.get_num_threads(),),
    ) as pool:
        return pool.submit(evaluate_agent, agent, cfg, **kwargs).result()
