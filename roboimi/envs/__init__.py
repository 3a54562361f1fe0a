"""Built-in dual-arm simulation, task registry and scripted expert (scored by roboimi.evaluation.rollout).

The headless GL backend is chosen when mujoco is first imported, so it is set here before any
mujoco / dm_control / gym_aloha import. An existing MUJOCO_GL wins; use MUJOCO_GL=osmesa (Debian package
libosmesa6) where EGL is unavailable.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

# Triton (which torchvision imports through torch._dynamo) and Mesa's GL drivers each bring their own LLVM;
# loading Triton after dm_control has loaded the GL libraries crashes the process (segfault), so load it first.
try:
    import triton  # noqa: F401
except ImportError:
    pass

from roboimi.envs.registry import list_tasks, make_env, register_task  # noqa: E402
from roboimi.envs.sim_env import DualArmSimEnv, InvalidActionError  # noqa: E402

__all__ = [
    "DualArmSimEnv",
    "InvalidActionError",
    "list_tasks",
    "make_env",
    "register_task",
]
