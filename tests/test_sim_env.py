"""Built-in dual-arm env: registry, seeding, observations, rendering options and error messages."""

import os
import subprocess
import sys
import unittest

import numpy as np

from gym_aloha.utils import sample_box_pose

from roboimi.envs import InvalidActionError, list_tasks, make_env, register_task
from tests.image_checks import pixels_near, red_pixels

START_GRIPPER_LINK_XYZ = {  # gripper link positions at START_ARM_POSE, as listed in gym-aloha's mocap setup
    "left": [-0.31718881, 0.5, 0.29525084],
    "right": [0.31718881, 0.49999888, 0.29525084],
}


class RegistryTest(unittest.TestCase):
    def test_builtin_tasks_registered(self):
        self.assertIn("sim_transfer", list_tasks())
        self.assertIn("sim_insertion", list_tasks())

    def test_unknown_task_lists_registered_tasks(self):
        with self.assertRaises(ValueError) as ctx:
            make_env("sim_juggling", camera_names=())
        self.assertIn("sim_juggling", str(ctx.exception))
        self.assertIn("sim_transfer, ", str(ctx.exception))
        self.assertIn("register_task", str(ctx.exception))

    def test_register_decorator_and_duplicate_name(self):
        @register_task("test_registry_dummy")
        def factory(image_size, camera_names, shadows):
            return ("built", image_size, camera_names, shadows)

        built = make_env("test_registry_dummy", image_size=[8, 9], camera_names=["a"])
        self.assertEqual(built, ("built", (8, 9), ("a",), False))
        with self.assertRaises(ValueError):
            register_task("test_registry_dummy", lambda **kwargs: None)


class TransferEnvTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = make_env("sim_transfer", image_size=(24, 40), camera_names=("top", "r_vis"))

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def test_observation_layout(self):
        obs = self.env.reset(0)
        self.assertEqual(obs["qpos"].shape, (14,))
        self.assertEqual(obs["qvel"].shape, (14,))
        self.assertEqual(obs["env_state"].shape, (7,))
        self.assertEqual(sorted(obs["images"]), ["r_vis", "top"])
        for image in obs["images"].values():
            self.assertEqual(image.shape, (24, 40, 3))
            self.assertEqual(image.dtype, np.uint8)
        self.assertEqual((self.env.max_reward, self.env.episode_len, self.env.action_dim), (4, 400, 14))

    def test_reset_is_deterministic_per_seed(self):
        first = self.env.reset(7)
        second = self.env.reset(7)
        other = self.env.reset(8)
        np.testing.assert_array_equal(first["env_state"], second["env_state"])
        np.testing.assert_array_equal(first["images"]["top"], second["images"]["top"])
        self.assertFalse(np.allclose(first["env_state"][:3], other["env_state"][:3]))
        self.assertFalse(np.array_equal(first["images"]["top"], other["images"]["top"]))

    def test_start_pose_and_gripper_positions(self):
        obs = self.env.reset(0)
        # Normalized finger position of START_ARM_POSE: (0.02239 - 0.01844) / (0.058 - 0.01844).
        self.assertAlmostEqual(obs["qpos"][6], 0.09985, places=4)
        expected = [START_GRIPPER_LINK_XYZ["left"], START_GRIPPER_LINK_XYZ["right"]]
        np.testing.assert_allclose(self.env.end_effector_positions(), expected, atol=1e-6)

    def test_holding_position_keeps_arms_still_and_earns_nothing(self):
        obs = self.env.reset(3)
        start = obs["qpos"].copy()
        for _ in range(25):
            obs, reward, success = self.env.step(start)
            self.assertEqual(reward, 0)
            self.assertFalse(success)
        np.testing.assert_allclose(obs["qpos"][:6], start[:6], atol=0.02)

    def test_bad_actions_are_rejected(self):
        self.env.reset(0)
        with self.assertRaisesRegex(InvalidActionError, r"shape \(13,\), expected \(14,\)"):
            self.env.step(np.zeros(13))
        with self.assertRaisesRegex(InvalidActionError, "non-finite"):
            self.env.step(np.full(14, np.nan))

    def test_unknown_camera_lists_available_names(self):
        with self.assertRaises(ValueError) as ctx:
            make_env("sim_transfer", camera_names=("wrist_cam",))
        for name in ("wrist_cam", "r_vis", "front", "angle", "front_close", "left_wrist"):
            self.assertIn(name, str(ctx.exception))
        with self.assertRaises(ValueError):
            self.env.render("nowhere")

    def test_aliases_render_the_model_cameras(self):
        self.env.reset(0)
        np.testing.assert_array_equal(self.env.render("front"), self.env.render("angle"))
        np.testing.assert_array_equal(self.env.render("r_vis"), self.env.render("right_wrist"))

    def test_each_arm_path_is_drawn_in_its_own_colour_with_start_and_end_markers(self):
        self.env.reset(0)
        size = (240, 320)
        plain = self.env.render_trajectory_image([], "top", size=size)
        left = np.linspace([-0.25, 0.3, 0.1], [-0.05, 0.8, 0.1], 30)
        right = np.linspace([0.25, 0.3, 0.1], [0.05, 0.8, 0.1], 30)
        drawn = self.env.render_trajectory_image([left, right], "top", size=size)
        self.assertEqual(drawn.shape, (*size, 3))
        for label, rgba in self.env.trajectory_legend:
            with self.subTest(label=label):
                self.assertGreater(pixels_near(drawn, rgba), pixels_near(plain, rgba) + 10)
        only_left = self.env.render_trajectory_image([left], "top", size=size)
        right_rgba = dict(self.env.trajectory_legend)["right gripper"]
        self.assertLess(pixels_near(only_left, right_rgba), pixels_near(drawn, right_rgba))
        np.testing.assert_array_equal(self.env.render("top", size=size), plain)  # the markers do not persist

    def test_media_size_is_independent_of_the_policy_image_size(self):
        self.env.reset(0)
        self.assertEqual(self.env.render("front").shape[:2], tuple(self.env.image_size))
        frame = self.env.render("front", size=(480, 640))
        self.assertEqual(frame.shape, (480, 640, 3))
        self.assertGreater(red_pixels(frame), 100)  # the red cube is in view of the media camera


class ObjectPoseTest(unittest.TestCase):
    def test_cube_pose_within_bounds(self):
        env = make_env("sim_transfer", camera_names=())
        poses = np.stack([env.reset(seed)["env_state"] for seed in range(30)])
        self.assertTrue(np.all((poses[:, 0] >= 0.0) & (poses[:, 0] <= 0.2)))
        self.assertTrue(np.all((poses[:, 1] >= 0.4) & (poses[:, 1] <= 0.6)))
        np.testing.assert_allclose(poses[:, 2], 0.05)
        np.testing.assert_allclose(poses[:, 3:], np.tile([1, 0, 0, 0], (30, 1)))
        self.assertGreater(np.ptp(poses[:, 0]), 0.1)  # actually randomized
        env.close()

    def test_peg_and_socket_poses_within_bounds(self):
        env = make_env("sim_insertion", camera_names=())
        poses = np.stack([env.reset(seed)["env_state"] for seed in range(30)])
        self.assertEqual(poses.shape, (30, 14))
        peg, socket = poses[:, :7], poses[:, 7:]
        self.assertTrue(np.all((peg[:, 0] >= 0.1) & (peg[:, 0] <= 0.2)))
        self.assertTrue(np.all((socket[:, 0] >= -0.2) & (socket[:, 0] <= -0.1)))
        for obj in (peg, socket):
            self.assertTrue(np.all((obj[:, 1] >= 0.4) & (obj[:, 1] <= 0.6)))
            np.testing.assert_allclose(obj[:, 2], 0.05)
        env.close()

    def test_pose_comes_from_the_env_not_gym_aloha_global(self):
        from gym_aloha.tasks import sim as gym_aloha_sim  # after roboimi.envs, which sets up the GL backend

        env = make_env("sim_transfer", camera_names=())
        np.testing.assert_array_equal(env.reset(11)["env_state"], sample_box_pose(11))
        self.assertIsNone(gym_aloha_sim.BOX_POSE[0])  # the module global stays untouched
        env.close()


class RenderingOptionsTest(unittest.TestCase):
    def test_shadows_off_by_default_and_switchable(self):
        plain = make_env("sim_transfer", image_size=(32, 32), camera_names=("top",))
        shaded = make_env("sim_transfer", image_size=(32, 32), camera_names=("top",), shadows=True)
        plain_image, shaded_image = plain.reset(0)["images"]["top"], shaded.reset(0)["images"]["top"]
        # Shadows only darken pixels (the arms' shadows on the table).
        self.assertGreater(np.sum(plain_image.astype(int) - shaded_image.astype(int) > 10), 5)
        plain.close()
        shaded.close()

    def test_renderer_failure_names_the_backends_and_package(self):
        env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
        env["MUJOCO_GL"] = "glfw"  # cannot open a context without a display
        code = "from roboimi.envs import make_env; make_env('sim_transfer', camera_names=())"
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("RuntimeError", result.stderr)
        for hint in ("MUJOCO_GL=egl", "MUJOCO_GL=osmesa", "libosmesa6"):
            self.assertIn(hint, result.stderr)
