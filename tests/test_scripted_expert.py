"""Scripted end-effector experts: waypoint maths, and demonstrations that succeed when replayed in joint space."""

import unittest

import numpy as np
from gym_aloha.utils import sample_box_pose, sample_insertion_pose

from roboimi.envs.scripted_policy import ScriptedDemonstrator, ScriptedPolicy, axis_angle_quat, quat_multiply, waypoint

# Normalized finger position at START_ARM_POSE: (0.02239 - 0.01844) / (0.058 - 0.01844).
START_GRIPPER_NORMALIZED = 0.099848


class QuaternionTest(unittest.TestCase):
    def test_axis_angle(self):
        np.testing.assert_allclose(axis_angle_quat([0, 1, 0], 90), [np.sqrt(0.5), 0, np.sqrt(0.5), 0])
        np.testing.assert_allclose(axis_angle_quat([1, 0, 0], -60), [np.cos(np.pi / 6), -0.5, 0, 0])

    def test_multiply_composes_rotations(self):
        q30 = axis_angle_quat([0, 0, 1], 30)
        np.testing.assert_allclose(quat_multiply(q30, q30), axis_angle_quat([0, 0, 1], 60), atol=1e-12)
        inverse = q30 * np.array([1, -1, -1, -1])
        np.testing.assert_allclose(quat_multiply(q30, inverse), [1, 0, 0, 0], atol=1e-12)
        # Non-commutative: x then y differs from y then x.
        qx, qy = axis_angle_quat([1, 0, 0], 90), axis_angle_quat([0, 1, 0], 90)
        np.testing.assert_allclose(quat_multiply(qx, qy), [0.5, 0.5, 0.5, 0.5], atol=1e-12)
        np.testing.assert_allclose(quat_multiply(qy, qx), [0.5, 0.5, 0.5, -0.5], atol=1e-12)


class InterpolationTest(unittest.TestCase):
    def test_linear_between_waypoints_and_hold_after_last(self):
        waypoints = [
            waypoint(0, [0, 0, 0], [1, 0, 0, 0], 0),
            waypoint(10, [1, 2, 3], [0, 1, 0, 0], 1),
            waypoint(30, [1, 2, 5], [0, 1, 0, 0], 0),
        ]
        np.testing.assert_allclose(ScriptedPolicy.interpolate(waypoints, 0), [0, 0, 0, 1, 0, 0, 0, 0])
        np.testing.assert_allclose(ScriptedPolicy.interpolate(waypoints, 4), [0.4, 0.8, 1.2, 0.6, 0.4, 0, 0, 0.4])
        np.testing.assert_allclose(ScriptedPolicy.interpolate(waypoints, 10), [1, 2, 3, 0, 1, 0, 0, 1])
        np.testing.assert_allclose(ScriptedPolicy.interpolate(waypoints, 25), [1, 2, 4.5, 0, 1, 0, 0, 0.25])
        np.testing.assert_allclose(ScriptedPolicy.interpolate(waypoints, 40), [1, 2, 5, 0, 1, 0, 0, 0])


class ExpertDemonstrationTest(unittest.TestCase):
    def check_demonstrations(self, task, seeds, first_object_pose):
        demonstrator = ScriptedDemonstrator(task, image_size=(16, 16), camera_names=())
        for seed in seeds:
            demo = demonstrator.demonstrate(seed)
            self.assertTrue(demo.success, f"{task} seed {seed}: replay max reward {demo.max_reward}")
            self.assertEqual(demo.max_reward, 4)
            for array in (demo.qpos, demo.qvel, demo.action):
                self.assertEqual(array.shape, (400, 14))
            # The replay starts from the same object pose the expert planned for.
            np.testing.assert_allclose(demo.env_state[0, :3], first_object_pose(seed)[:3], atol=2e-3)
            # Gripper actions are commands: closed (0) at the start while the fingers rest slightly open.
            self.assertEqual(demo.action[0, 6], 0.0)
            self.assertEqual(demo.action[0, 13], 0.0)
            self.assertAlmostEqual(demo.qpos[0, 6], START_GRIPPER_NORMALIZED, places=4)
            self.assertTrue(np.all((demo.action[:, [6, 13]] >= -1e-9) & (demo.action[:, [6, 13]] <= 1 + 1e-9)))
            self.assertGreater(demo.action[:, 13].max(), 0.99)  # the right gripper opened to grasp
        demonstrator.close()

    def test_transfer_expert_succeeds(self):
        self.check_demonstrations("sim_transfer", (0, 1), sample_box_pose)

    def test_insertion_expert_succeeds(self):
        self.check_demonstrations("sim_insertion", (0, 1), lambda seed: np.concatenate(sample_insertion_pose(seed)))

    def test_unknown_task_has_no_expert(self):
        with self.assertRaisesRegex(ValueError, "sim_transfer, sim_insertion"):
            ScriptedDemonstrator("sim_juggling")
