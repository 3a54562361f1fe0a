"""Scripted end-effector experts and demonstration generation (the ACT recipe).

1. The expert plans waypoints (xyz, quat wxyz, gripper) per arm from the first observation of the mocap
   (end-effector) env and follows their linear interpolation open loop.
2. The arm joint positions it produces, with each gripper entry replaced by the normalized commanded gripper
   position, become the joint trajectory.
3. That trajectory is replayed as actions in the joint-controlled env with the same object pose while the
   observations are recorded; the demonstration succeeds if the replay reaches the max reward.
"""

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from gym_aloha.constants import normalize_puppet_gripper_position

from roboimi.envs.aloha_tasks import ALOHA_TASKS, build_end_effector_env
from roboimi.envs.sim_env import DualArmSimEnv

IDENTITY_QUAT = np.array([1.0, 0.0, 0.0, 0.0])


def axis_angle_quat(axis: Sequence[float], degrees: float) -> np.ndarray:
    """(4,) unit quaternion wxyz rotating by `degrees` about `axis`."""
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * np.asarray(axis, dtype=np.float64)])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of wxyz quaternions (rotate by b, then by a)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )


def waypoint(t: int, xyz, quat, gripper: float) -> tuple[int, np.ndarray]:
    """Step t and the (8,) arm target [xyz, quat wxyz, normalized gripper] to reach at that step."""
    return t, np.concatenate([xyz, quat, [gripper]]).astype(np.float64)


class ScriptedPolicy:
    """Open-loop follower of per-arm waypoints planned from the first observation.

    `__call__(obs)` returns the (16,) end-effector action [left xyz, quat, gripper, right xyz, quat, gripper].
    """

    def __init__(self):
        self.step_count = 0
        self.left_trajectory: list[tuple[int, np.ndarray]] = []
        self.right_trajectory: list[tuple[int, np.ndarray]] = []

    def plan(self, first_obs: dict) -> tuple[list, list]:
        """Left and right waypoint lists, each starting at t = 0 and ending at the episode length."""
        raise NotImplementedError

    @staticmethod
    def interpolate(waypoints: list[tuple[int, np.ndarray]], t: int) -> np.ndarray:
        """(8,) arm target at step t, linear between the waypoints around t (the last one after it)."""
        following = next((i for i, (step, _) in enumerate(waypoints) if step > t), len(waypoints) - 1)
        (t0, previous), (t1, nxt) = waypoints[following - 1], waypoints[following]
        frac = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
        return previous + (nxt - previous) * frac

    def __call__(self, obs: dict) -> np.ndarray:
        if self.step_count == 0:
            self.left_trajectory, self.right_trajectory = self.plan(obs)
        left = self.interpolate(self.left_trajectory, self.step_count)
        right = self.interpolate(self.right_trajectory, self.step_count)
        action = np.concatenate([left, right])
        self.step_count += 1
        return action


class PickAndTransferPolicy(ScriptedPolicy):
    """Right arm picks the cube and hands it to the left arm at a meeting point above the table."""

    def plan(self, first_obs):
        init_left, init_right = first_obs["mocap_pose_left"], first_obs["mocap_pose_right"]
        box_xyz = first_obs["env_state"][:3]
        pick_quat = quat_multiply(init_right[3:], axis_angle_quat([0, 1, 0], -60))
        meet_left_quat = axis_angle_quat([1, 0, 0], 90)
        meet_xyz = np.array([0.0, 0.5, 0.25])

        left = [
            waypoint(0, init_left[:3], init_left[3:], 0),  # sleep
            waypoint(100, meet_xyz + [-0.1, 0, -0.02], meet_left_quat, 1),  # approach meet position
            waypoint(260, meet_xyz + [0.02, 0, -0.02], meet_left_quat, 1),  # move to meet position
            waypoint(310, meet_xyz + [0.02, 0, -0.02], meet_left_quat, 0),  # close gripper
            waypoint(360, meet_xyz + [-0.1, 0, -0.02], IDENTITY_QUAT, 0),  # move left
            waypoint(400, meet_xyz + [-0.1, 0, -0.02], IDENTITY_QUAT, 0),  # stay
        ]
        right = [
            waypoint(0, init_right[:3], init_right[3:], 0),  # sleep
            waypoint(90, box_xyz + [0, 0, 0.08], pick_quat, 1),  # approach the cube
            waypoint(130, box_xyz + [0, 0, -0.015], pick_quat, 1),  # go down
            waypoint(170, box_xyz + [0, 0, -0.015], pick_quat, 0),  # close gripper
            waypoint(200, meet_xyz + [0.05, 0, 0], pick_quat, 0),  # approach meet position
            waypoint(220, meet_xyz, pick_quat, 0),  # move to meet position
            waypoint(310, meet_xyz, pick_quat, 1),  # open gripper
            waypoint(360, meet_xyz + [0.1, 0, 0], pick_quat, 1),  # move to right
            waypoint(400, meet_xyz + [0.1, 0, 0], pick_quat, 1),  # stay
        ]
        return left, right


class InsertionPolicy(ScriptedPolicy):
    """Left arm grasps the socket, right arm the peg; both meet above the table and push the peg in."""

    def plan(self, first_obs):
        init_left, init_right = first_obs["mocap_pose_left"], first_obs["mocap_pose_right"]
        peg_xyz, socket_xyz = first_obs["env_state"][:3], first_obs["env_state"][7:10]
        pick_quat_right = quat_multiply(init_right[3:], axis_angle_quat([0, 1, 0], -60))
        pick_quat_left = quat_multiply(init_right[3:], axis_angle_quat([0, 1, 0], 60))
        meet_xyz = np.array([0.0, 0.5, 0.15])
        lift_right = 0.00715  # the peg is grasped slightly lower than the socket's opening

        left = [
            waypoint(0, init_left[:3], init_left[3:], 0),  # sleep
            waypoint(120, socket_xyz + [0, 0, 0.08], pick_quat_left, 1),  # approach the socket
            waypoint(170, socket_xyz + [0, 0, -0.03], pick_quat_left, 1),  # go down
            waypoint(220, socket_xyz + [0, 0, -0.03], pick_quat_left, 0),  # close gripper
            waypoint(285, meet_xyz + [-0.1, 0, 0], pick_quat_left, 0),  # approach meet position
            waypoint(340, meet_xyz + [-0.05, 0, 0], pick_quat_left, 0),  # insertion
            waypoint(400, meet_xyz + [-0.05, 0, 0], pick_quat_left, 0),  # stay
        ]
        right = [
            waypoint(0, init_right[:3], init_right[3:], 0),  # sleep
            waypoint(120, peg_xyz + [0, 0, 0.08], pick_quat_right, 1),  # approach the peg
            waypoint(170, peg_xyz + [0, 0, -0.03], pick_quat_right, 1),  # go down
            waypoint(220, peg_xyz + [0, 0, -0.03], pick_quat_right, 0),  # close gripper
            waypoint(285, meet_xyz + [0.1, 0, lift_right], pick_quat_right, 0),  # approach meet position
            waypoint(340, meet_xyz + [0.05, 0, lift_right], pick_quat_right, 0),  # insertion
            waypoint(400, meet_xyz + [0.05, 0, lift_right], pick_quat_right, 0),  # stay
        ]
        return left, right


SCRIPTED_POLICIES = {"sim_transfer": PickAndTransferPolicy, "sim_insertion": InsertionPolicy}


@dataclass
class Demonstration:
    """One recorded episode; T = episode length, obs[t] is paired with action[t]."""

    seed: int
    success: bool  # the joint-space replay reached the max reward
    max_reward: float  # of the replay
    expert_max_reward: float  # of the end-effector rollout
    qpos: np.ndarray  # (T, 14)
    qvel: np.ndarray  # (T, 14)
    env_state: np.ndarray  # (T, E)
    images: dict  # cam -> (T, H, W, 3) uint8
    action: np.ndarray  # (T, 14)


class ScriptedDemonstrator:
    """Produces expert demonstrations of a built-in task; both envs are built once and reused."""

    def __init__(
        self,
        task: str,
        image_size: Sequence[int] = (96, 96),
        camera_names: Sequence[str] = ("r_vis", "top", "front"),
        shadows: bool = False,
    ):
        if task not in SCRIPTED_POLICIES:
            raise ValueError(
                f"No scripted expert for task {task!r}; scripted experts exist for: {', '.join(SCRIPTED_POLICIES)}."
            )
        spec = ALOHA_TASKS[task]
        self._policy_cls = SCRIPTED_POLICIES[task]
        self._sample_object_pose = spec.sample_object_pose
        self._ee_task = spec.ee_task()
        self._ee_env = build_end_effector_env(spec.ee_xml, self._ee_task)
        self.env = DualArmSimEnv(spec, image_size=image_size, camera_names=camera_names, shadows=shadows)

    def joint_trajectory(self, seed: int) -> tuple[np.ndarray, float]:
        """Run the expert in the mocap env: (episode_len + 1, 14) joint commands and its max reward."""
        self._ee_task.object_pose = self._sample_object_pose(seed)
        policy = self._policy_cls()
        timestep = self._ee_env.reset()
        states = [timestep.observation]
        rewards = []
        for _ in range(self.env.episode_len):
            timestep = self._ee_env.step(policy(timestep.observation))
            states.append(timestep.observation)
            rewards.append(timestep.reward)
        trajectory = np.stack([state["qpos"] for state in states])
        # Command the grippers where the expert commanded them, not where the fingers ended up.
        gripper_ctrl = np.stack([state["gripper_ctrl"] for state in states])
        trajectory[:, 6] = normalize_puppet_gripper_position(gripper_ctrl[:, 0])
        trajectory[:, 13] = normalize_puppet_gripper_position(gripper_ctrl[:, 2])
        return trajectory, float(max(rewards))

    def demonstrate(self, seed: int) -> Demonstration:
        """Replay the expert's joint trajectory in the joint env (same object pose) while recording."""
        trajectory, expert_max_reward = self.joint_trajectory(seed)
        actions = trajectory[: self.env.episode_len]
        obs, _ = self.env.reset(seed=seed)
        observations, rewards = [], []
        for action in actions:
            observations.append(obs)
            obs, reward, *_ = self.env.step(action)
            rewards.append(reward)
        max_reward = max(rewards)
        return Demonstration(
            seed=seed,
            success=max_reward >= self.env.max_reward,
            max_reward=max_reward,
            expert_max_reward=expert_max_reward,
            qpos=np.stack([o["qpos"] for o in observations]),
            qvel=np.stack([o["qvel"] for o in observations]),
            env_state=np.stack([o["env_state"] for o in observations]),
            images={cam: np.stack([o["images"][cam] for o in observations]) for cam in self.env.camera_names},
            action=actions.copy(),
        )

    def close(self):
        self.env.close()
