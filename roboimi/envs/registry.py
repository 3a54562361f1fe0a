"""Task registry: task name -> env factory.

A factory is called as `factory(image_size=(H, W), camera_names=(...), shadows=bool)` and returns a
`gymnasium.Env` that follows the interface in docs/custom_envs.md (`DualArmSimEnv` is the built-in example).
The built-in tasks are also registered with gymnasium (GYMNASIUM_IDS), for `gymnasium.make` and `make_vec`.
"""

import functools
from typing import Callable, Sequence

import gymnasium

from roboimi.envs.aloha_tasks import ALOHA_TASKS
from roboimi.envs.sim_env import DualArmSimEnv

_FACTORIES: dict[str, Callable] = {}


def register_task(name: str, factory: Callable | None = None):
    """Register `factory` under `name`; without `factory`, return a decorator that registers its target."""
    if factory is None:
        return lambda target: register_task(name, target)
    if name in _FACTORIES and _FACTORIES[name] is not factory:
        raise ValueError(f"Task {name!r} is already registered; choose another name for the new env.")
    _FACTORIES[name] = factory
    return factory


def list_tasks() -> list[str]:
    return sorted(_FACTORIES)


def make_env(
    task: str,
    image_size: Sequence[int] = (96, 96),
    camera_names: Sequence[str] = ("r_vis", "top", "front"),
    shadows: bool = False,
):
    """Build the env registered as `task`, rendering `camera_names` at `image_size` = (H, W)."""
    if task not in _FACTORIES:
        raise ValueError(
            f"Unknown task {task!r}; registered tasks: {', '.join(list_tasks())}. "
            "Register your own with roboimi.envs.register_task (see docs/custom_envs.md)."
        )
    return _FACTORIES[task](image_size=tuple(image_size), camera_names=tuple(camera_names), shadows=shadows)


GYMNASIUM_IDS = {"sim_transfer": "roboimi/SimTransfer-v0", "sim_insertion": "roboimi/SimInsertion-v0"}

for _name, _spec in ALOHA_TASKS.items():
    register_task(_name, functools.partial(DualArmSimEnv, _spec))
    # No max_episode_steps: the env truncates at its episode_len itself, also when built by make_env.
    gymnasium.register(GYMNASIUM_IDS[_name], entry_point="roboimi.envs.sim_env:DualArmSimEnv", kwargs={"spec": _spec})
