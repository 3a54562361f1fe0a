"""gym-aloha task classes adapted for RoboIMI.

gym-aloha's tasks have three habits that do not fit RoboIMI:
the joint tasks read the object pose from a module global, the end-effector tasks sample
it without a seed, and every `get_observation` renders three 480x640 cameras with shadows.
The subclasses here take the object pose as an instance attribute and return state only;
`DualArmSimEnv` renders the cameras it is asked for.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
from dm_control import mujoco
from dm_control.rl import control
from dm_control.suite import base
from gym_aloha.constants import ASSETS_DIR, DT, START_ARM_POSE
from gym_aloha.tasks.sim import InsertionTask, TransferCubeTask
from gym_aloha.tasks.sim_end_effector import InsertionEndEffectorTask, TransferCubeEndEffectorTask
from gym_aloha.utils import sample_box_pose, sample_insertion_pose

NUM_ROBOT_QPOS = 16  # 2 arms x (6 joints + 2 fingers); object poses follow in qpos
# solimp (dmin, dmax, width) of the mocap welds. The models' own ".25 .25 .001" leaves the grippers lagging
# several centimetres behind their mocap targets in MuJoCo 3 (the cube is missed); a stiff weld makes the
# gripper links follow the waypoints closely.
STIFF_WELD_SOLIMP = (0.9, 0.95, 0.001)


class _PosedTask:
    """Holds the object pose(s) for the next episode: (E,) = 7 per free object (xyz, quat wxyz)."""

    object_pose: np.ndarray | None = None

    def _place_objects(self, physics):
        if self.object_pose is None:
            raise RuntimeError(f"{type(self).__name__}.object_pose is unset; set it before env.reset().")
        physics.data.qpos[NUM_ROBOT_QPOS:] = self.object_pose


class _JointTask(_PosedTask):
    def initialize_episode(self, physics):
        with physics.reset_context():
            physics.data.qpos[:NUM_ROBOT_QPOS] = START_ARM_POSE
            np.copyto(physics.data.ctrl, START_ARM_POSE)
            self._place_objects(physics)
        base.Task.initialize_episode(self, physics)

    def get_observation(self, physics):
        return {
            "qpos": self.get_qpos(physics),  # (14,)
            "qvel": self.get_qvel(physics),  # (14,)
            "env_state": self.get_env_state(physics),  # (E,)
        }


class _EndEffectorTask(_PosedTask):
    def initialize_episode(self, physics):
        self.initialize_robots(physics)
        self._place_objects(physics)
        base.Task.initialize_episode(self, physics)

    def get_observation(self, physics):
        return {
            "qpos": self.get_qpos(physics),  # (14,)
            "qvel": self.get_qvel(physics),  # (14,)
            "env_state": self.get_env_state(physics),  # (E,)
            # The scripted expert starts its waypoints from the mocap poses (xyz + quat wxyz, (7,) each).
            "mocap_pose_left": np.concatenate([physics.data.mocap_pos[0], physics.data.mocap_quat[0]]),
            "mocap_pose_right": np.concatenate([physics.data.mocap_pos[1], physics.data.mocap_quat[1]]),
            # (4,) finger controls; the joint trajectory takes its gripper commands from here.
            "gripper_ctrl": physics.data.ctrl.copy(),
        }


class PosedTransferCubeTask(_JointTask, TransferCubeTask):
    pass


class PosedInsertionTask(_JointTask, InsertionTask):
    pass


class PosedTransferCubeEndEffectorTask(_EndEffectorTask, TransferCubeEndEffectorTask):
    pass


class PosedInsertionEndEffectorTask(_EndEffectorTask, InsertionEndEffectorTask):
    pass


def sample_cube_pose(seed: int) -> np.ndarray:
    """(7,) cube pose: x in [0, 0.2], y in [0.4, 0.6], z = 0.05, identity quaternion."""
    return sample_box_pose(seed)


def sample_peg_socket_pose(seed: int) -> np.ndarray:
    """(14,) peg pose then socket pose (peg x in [0.1, 0.2], socket x in [-0.2, -0.1], y in [0.4, 0.6])."""
    return np.concatenate(sample_insertion_pose(seed))


@dataclass(frozen=True)
class AlohaTaskSpec:
    """Everything that distinguishes one built-in bimanual task from another."""

    name: str
    joint_xml: str
    joint_task: type
    ee_xml: str
    ee_task: type
    sample_object_pose: Callable[[int], np.ndarray]  # seed -> (E,)
    episode_len: int = 400


ALOHA_TASKS = {
    "sim_transfer": AlohaTaskSpec(
        name="sim_transfer",
        joint_xml="bimanual_viperx_transfer_cube.xml",
        joint_task=PosedTransferCubeTask,
        ee_xml="bimanual_viperx_end_effector_transfer_cube.xml",
        ee_task=PosedTransferCubeEndEffectorTask,
        sample_object_pose=sample_cube_pose,
    ),
    "sim_insertion": AlohaTaskSpec(
        name="sim_insertion",
        joint_xml="bimanual_viperx_insertion.xml",
        joint_task=PosedInsertionTask,
        ee_xml="bimanual_viperx_end_effector_insertion.xml",
        ee_task=PosedInsertionEndEffectorTask,
        sample_object_pose=sample_peg_socket_pose,
    ),
}


def build_control_env(xml_name: str, task: base.Task) -> control.Environment:
    """A dm_control environment stepping at 50 Hz (10 physics substeps of 2 ms)."""
    physics = mujoco.Physics.from_xml_path(str(ASSETS_DIR / xml_name))
    return control.Environment(
        physics, task, time_limit=float("inf"), control_timestep=DT, n_sub_steps=None, flat_observation=False
    )


def build_end_effector_env(xml_name: str, task: base.Task) -> control.Environment:
    """A mocap-driven control env whose grippers follow their mocap bodies through stiff welds."""
    env = build_control_env(xml_name, task)
    env.physics.model.eq_solimp[:, :3] = STIFF_WELD_SOLIMP
    return env
