"""Built-in dual-arm env: registry, seeding, observations, the gymnasium API, rendering options and error messages."""

import functools
import os
import subprocess
import sys
import unittest
import warnings

import gymnasium
import numpy as np
from gym_aloha.utils import sample_box_pose
from gymnasium.utils.env_checker import check_env

from roboimi.envs import InvalidActionError, list_tasks, make_env, register_task
from roboimi.envs.registry import GYMNASIUM_IDS
from roboimi.envs.scripted_policy import ScriptedDemonstrator
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
        obs, info = self.env.reset(seed=0)
        self.assertEqual(info, {"seed": 0})
        self.assertEqual(obs["qpos"].shape, (14,))
        self.assertEqual(obs["qvel"].shape, (14,))
        self.assertEqual(obs["env_state"].shape, (7,))
        self.assertEqual(sorted(obs["images"]), ["r_vis", "top"])
        for image in obs["images"].values():
            self.assertEqual(image.shape, (24, 40, 3))
            self.assertEqual(image.dtype, np.uint8)
        self.assertEqual((self.env.max_reward, self.env.episode_len, self.env.action_space.shape), (4, 400, (14,)))
        self.assertIn(obs, self.env.observation_space)

    def test_reset_is_deterministic_per_seed(self):
        first, _ = self.env.reset(seed=7)
        second, _ = self.env.reset(seed=7)
        other, _ = self.env.reset(seed=8)
        np.testing.assert_array_equal(first["env_state"], second["env_state"])
        np.testing.assert_array_equal(first["images"]["top"], second["images"]["top"])
        self.assertFalse(np.allclose(first["env_state"][:3], other["env_state"][:3]))
        self.assertFalse(np.array_equal(first["images"]["top"], other["images"]["top"]))

    def test_start_pose_and_gripper_positions(self):
        obs, _ = self.env.reset(seed=0)
        # Normalized finger position of START_ARM_POSE: (0.02239 - 0.01844) / (0.058 - 0.01844).
        self.assertAlmostEqual(obs["qpos"][6], 0.09985, places=4)
        # The fingertips sit ahead of the gripper links, toward the table centre, at about their height.
        tips = self.env.end_effector_positions()
        links = np.array([START_GRIPPER_LINK_XYZ["left"], START_GRIPPER_LINK_XYZ["right"]])
        self.assertEqual(tips.shape, (2, 3))
        np.testing.assert_array_less(np.abs(tips[:, 0]), np.abs(links[:, 0]) - 0.1)
        np.testing.assert_allclose(tips[:, 1:], links[:, 1:], atol=0.05)
        np.testing.assert_allclose(self.env.object_positions(), [obs["env_state"][:3]], atol=1e-6)  # the cube

    def test_holding_position_keeps_arms_still_and_earns_nothing(self):
        obs, _ = self.env.reset(seed=3)
        start = obs["qpos"].copy()
        for _ in range(25):
            obs, reward, terminated, truncated, info = self.env.step(start)
            self.assertEqual(reward, 0)
            self.assertEqual((terminated, truncated, info), (False, False, {"is_success": False}))
        np.testing.assert_allclose(obs["qpos"][:6], start[:6], atol=0.02)

    def test_bad_actions_are_rejected(self):
        self.env.reset(seed=0)
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
            self.env.render_image("nowhere")

    def test_aliases_render_the_model_cameras(self):
        self.env.reset(seed=0)
        np.testing.assert_array_equal(self.env.render_image("front"), self.env.render_image("angle"))
        np.testing.assert_array_equal(self.env.render_image("r_vis"), self.env.render_image("right_wrist"))

    def test_each_arm_and_object_path_is_drawn_in_its_own_colour_with_start_and_end_markers(self):
        self.env.reset(seed=0)
        size = (240, 320)
        plain = self.env.render_trajectory_image([], "top", size=size)
        left = np.linspace([-0.25, 0.3, 0.1], [-0.05, 0.8, 0.1], 30)
        right = np.linspace([0.25, 0.3, 0.1], [0.05, 0.8, 0.1], 30)
        cube = np.linspace([0.0, 0.45, 0.05], [0.0, 0.7, 0.3], 30)
        drawn = self.env.render_trajectory_image([left, right], "top", size=size, object_paths=[cube])
        self.assertEqual(drawn.shape, (*size, 3))
        for label, rgba in self.env.trajectory_legend:
            with self.subTest(label=label):
                self.assertGreater(pixels_near(drawn, rgba), pixels_near(plain, rgba) + 10)
        only_left = self.env.render_trajectory_image([left], "top", size=size)
        right_rgba = dict(self.env.trajectory_legend)["right fingertips"]
        self.assertLess(pixels_near(only_left, right_rgba), pixels_near(drawn, right_rgba))
        np.testing.assert_array_equal(self.env.render_image("top", size=size), plain)  # the markers do not persist

    def test_media_size_is_independent_of_the_policy_image_size(self):
        self.env.reset(seed=0)
        self.assertEqual(self.env.render_image("front").shape[:2], tuple(self.env.image_size))
        frame = self.env.render_image("front", size=(480, 640))
        self.assertEqual(frame.shape, (480, 640, 3))
        self.assertGreater(red_pixels(frame), 100)  # the red cube is in view of the media camera
        # gymnasium's render(): the front camera at the media size by default.
        np.testing.assert_array_equal(self.env.render(), frame)


class ObjectPoseTest(unittest.TestCase):
    def test_cube_pose_within_bounds(self):
        env = make_env("sim_transfer", camera_names=())
        poses = np.stack([env.reset(seed=seed)[0]["env_state"] for seed in range(30)])
        self.assertTrue(np.all((poses[:, 0] >= 0.0) & (poses[:, 0] <= 0.2)))
        self.assertTrue(np.all((poses[:, 1] >= 0.4) & (poses[:, 1] <= 0.6)))
        np.testing.assert_allclose(poses[:, 2], 0.05)
        np.testing.assert_allclose(poses[:, 3:], np.tile([1, 0, 0, 0], (30, 1)))
        self.assertGreater(np.ptp(poses[:, 0]), 0.1)  # actually randomized
        env.close()

    def test_peg_and_socket_poses_within_bounds(self):
        env = make_env("sim_insertion", camera_names=())
        poses = np.stack([env.reset(seed=seed)[0]["env_state"] for seed in range(30)])
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
        np.testing.assert_array_equal(env.reset(seed=11)[0]["env_state"], sample_box_pose(11))
        self.assertIsNone(gym_aloha_sim.BOX_POSE[0])  # the module global stays untouched
        env.close()


class GymnasiumApiTest(unittest.TestCase):
    def test_registered_env_passes_gymnasiums_checker(self):
        env = gymnasium.make(
            GYMNASIUM_IDS["sim_transfer"], image_size=(16, 16), camera_names=("top",), render_size=(24, 32)
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        # The checker only advises here: the state boxes are unbounded (MuJoCo's joint limits are soft) and the
        # action box is in radians. Anything else it reports (non-determinism, reused arrays, ...) fails the test.
        advice = ("infinity", "symmetric and normalized")
        reports = [str(w.message) for w in caught if "WARN:" in str(w.message)]
        self.assertEqual([m for m in reports if not any(a in m for a in advice)], [])
        env.reset(seed=0)
        self.assertEqual(env.render().shape, (24, 32, 3))
        env.close()

    def test_action_space_holds_the_joint_limits_and_normalized_grippers(self):
        env = make_env("sim_insertion", camera_names=())
        space = env.action_space
        env.close()
        np.testing.assert_allclose(space.low[[0, 1, 7, 8]], [-3.14158, -1.85005, -3.14158, -1.85005])
        np.testing.assert_allclose(space.high[[2, 4, 9, 11]], [1.6057, 2.23402, 1.6057, 2.23402])
        np.testing.assert_array_equal(space.low[[6, 13]], [0, 0])
        np.testing.assert_array_equal(space.high[[6, 13]], [1, 1])

    def test_seedless_reset_follows_the_last_seed_and_reports_its_own(self):
        env = make_env("sim_transfer", camera_names=())
        env.reset(seed=5)
        first, info = env.reset()
        env.reset(seed=5)
        again, info_again = env.reset()
        np.testing.assert_array_equal(first["env_state"], again["env_state"])
        self.assertEqual(info, info_again)
        self.assertFalse(np.allclose(first["env_state"][:3], sample_box_pose(5)[:3]))  # a new pose, not seed 5's
        np.testing.assert_array_equal(env.reset(seed=info["seed"])[0]["env_state"], first["env_state"])
        with self.assertRaisesRegex(ValueError, "no options"):
            env.reset(options={"object_pose": sample_box_pose(0)})
        env.close()

    def test_sync_vector_env_steps_two_seeded_envs(self):
        make = functools.partial(make_env, "sim_transfer", image_size=(16, 16), camera_names=("top",))
        envs = gymnasium.vector.SyncVectorEnv([make, make])
        obs, _ = envs.reset(seed=3)  # seeds 3 and 4
        np.testing.assert_array_equal(obs["env_state"], [sample_box_pose(3), sample_box_pose(4)])
        self.assertFalse(np.array_equal(obs["images"]["top"][0], obs["images"]["top"][1]))
        obs, reward, terminated, truncated, _ = envs.step(obs["qpos"])
        self.assertEqual((obs["qpos"].shape, obs["qvel"].shape, obs["env_state"].shape), ((2, 14), (2, 14), (2, 7)))
        self.assertEqual((obs["images"]["top"].shape, obs["images"]["top"].dtype), ((2, 16, 16, 3), np.uint8))
        np.testing.assert_array_equal(reward, [0, 0])
        self.assertFalse(terminated.any() or truncated.any())
        envs.close()

    def test_success_terminates_and_the_episode_length_truncates(self):
        expert = ScriptedDemonstrator("sim_transfer", camera_names=())
        trajectory, _ = expert.joint_trajectory(0)
        expert.close()
        env = make_env("sim_transfer", camera_names=())
        env.reset(seed=0)
        steps = [env.step(action)[1:] for action in trajectory[: env.episode_len]]
        rewards, terminated, truncated, infos = zip(*steps)
        reached = np.maximum.accumulate(rewards) >= env.max_reward
        self.assertTrue(reached[-1] and not reached[0])
        # Success ends the episode (terminated stays True) but the env keeps stepping to the episode length.
        np.testing.assert_array_equal(terminated, reached)
        np.testing.assert_array_equal([info["is_success"] for info in infos], reached)
        np.testing.assert_array_equal(truncated, np.arange(1, env.episode_len + 1) >= env.episode_len)
        _, _, terminated_after, truncated_after, _ = env.step(trajectory[-1])
        self.assertTrue(terminated_after and truncated_after)
        env.close()


class RenderingOptionsTest(unittest.TestCase):
    def test_shadows_off_by_default_and_switchable(self):
        plain = make_env("sim_transfer", image_size=(32, 32), camera_names=("top",))
        shaded = make_env("sim_transfer", image_size=(32, 32), camera_names=("top",), shadows=True)
        plain_image, shaded_image = (env.reset(seed=0)[0]["images"]["top"] for env in (plain, shaded))
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
