"""Rollout evaluator: success bookkeeping against the task reward, artifacts, aborts and policy mode."""

import functools
import json
import tempfile
import unittest
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image

from roboimi.envs import register_task
from roboimi.evaluation.rollout import NoEpisodeFinished, evaluate_policy
from roboimi.envs.aloha_tasks import ALOHA_TASKS
from roboimi.evaluation.media import SHEET_LABEL_WIDTH, SHEET_THUMBNAIL_HW
from roboimi.envs.scripted_policy import ScriptedDemonstrator
from roboimi.envs.sim_env import DualArmSimEnv
from tests.image_checks import pixels_near, red_pixels

TIMING_KEYS = ("obs_read_ms", "preprocess_ms", "inference_ms", "env_step_ms", "loop_total_ms")


class ReplayPolicy:
    """Plays back one joint trajectory per episode (the scripted expert's, planned for the same seed)."""

    def __init__(self, trajectories):
        self.trajectories = trajectories
        self.episode = -1

    def reset(self):
        self.episode += 1
        self.t = 0

    def select_action(self, obs):
        action = self.trajectories[self.episode % len(self.trajectories)][self.t]
        self.t += 1
        return torch.as_tensor(action, dtype=torch.float32)


class HoldPolicy:
    """Commands the current joint positions: the arms stay put and never touch the object."""

    def reset(self):
        pass

    def select_action(self, obs):
        return obs["qpos"].copy()


class RandomJointPolicy:
    """Uniform random joint targets within +-1 rad and random gripper commands."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self):
        pass

    def select_action(self, obs):
        action = self.rng.uniform(-1.0, 1.0, 14)
        action[[6, 13]] = self.rng.uniform(0.0, 1.0, 2)
        return action


class FaultyPolicy(torch.nn.Module):
    """Episode 0: wrong shape at step 3; episode 1: NaN at step 2; later episodes: hold position."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.episode = -1
        self.modes_seen = set()

    def reset(self):
        self.episode += 1
        self.t = 0

    def select_action(self, obs):
        self.modes_seen.add((self.training, torch.is_grad_enabled()))
        self.t += 1
        if self.episode == 0 and self.t == 3:
            return torch.zeros(1, 16)
        if self.episode == 1 and self.t == 2:
            return torch.full((14,), float("nan"))
        return torch.as_tensor(obs["qpos"])


class EvaluatorTest(unittest.TestCase):
    def test_success_agrees_with_task_reward(self):
        expert = ScriptedDemonstrator("sim_transfer", camera_names=())
        trajectory, _ = expert.joint_trajectory(1000)
        expert.close()
        replay = ReplayPolicy([trajectory])
        summary = evaluate_policy(replay, "sim_transfer", 1, seed=1000, camera_names=(), progress=False)
        episode = summary["episodes"][0]
        self.assertEqual((episode["seed"], episode["steps"]), (1000, 400))
        self.assertEqual((episode["max_reward"], episode["success"]), (4.0, True))
        self.assertEqual(summary["success_rate"], 1.0)
        self.assertEqual(summary["mean_max_reward"], 4.0)
        self.assertGreater(summary["mean_return"], 4.0)

        summary = evaluate_policy(
            HoldPolicy(), "sim_transfer", 1, seed=1000, max_timesteps=50, camera_names=(), progress=False
        )
        self.assertEqual((summary["success_rate"], summary["mean_return"], summary["mean_max_reward"]), (0.0, 0.0, 0.0))
        self.assertEqual(summary["episodes"][0]["steps"], 50)

    def test_random_policy_does_not_succeed(self):
        summary = evaluate_policy(
            RandomJointPolicy(0), "sim_insertion", 2, max_timesteps=150, camera_names=(), progress=False
        )
        self.assertEqual(summary["success_rate"], 0.0)
        self.assertEqual([e["seed"] for e in summary["episodes"]], [1000, 1001])
        self.assertLess(summary["mean_max_reward"], 4.0)

    def test_artifacts(self):
        with tempfile.TemporaryDirectory() as tmp:
            summary = evaluate_policy(
                HoldPolicy(), "sim_transfer", 2, seed=3, image_size=(32, 32), camera_names=("top",), max_timesteps=12,
                output_dir=tmp, record_video=True, video_size=(128, 160), video_episodes=1, progress=False,
            )
            out = Path(tmp)
            on_disk = json.loads((out / "summary.json").read_text())
            self.assertEqual(on_disk["num_episodes"], 2)
            self.assertEqual(on_disk["episodes"], summary["episodes"])
            for key in ("success_rate", "mean_return", "mean_max_reward", "mean_inference_ms", *TIMING_KEYS):
                self.assertIn(key, on_disk)
            self.assertGreater(summary["obs_read_ms"], 0.0)  # the top camera is rendered every step
            self.assertEqual(summary["preprocess_ms"], 0.0)
            self.assertGreaterEqual(summary["loop_total_ms"], summary["inference_ms"] + summary["env_step_ms"])
            expected_images = [str(out / "trajectory_0.png"), str(out / "trajectory_1.png")]
            self.assertEqual(summary["trajectory_images"], expected_images)

            data = np.load(out / "trajectory_1.npz")
            self.assertEqual(data["ee_positions"].shape, (13, 2, 3))
            self.assertEqual(data["actions"].shape, (12, 14))
            self.assertEqual(int(data["seed"]), 4)
            # Holding still: the fingertips stay at their start positions on either side of the table centre, and
            # the cube on the table.
            self.assertLess(data["ee_positions"][:, 0, 0].max(), -0.1)
            self.assertGreater(data["ee_positions"][:, 1, 0].min(), 0.1)
            self.assertEqual(data["object_positions"].shape, (13, 1, 3))
            self.assertLess(np.ptp(data["object_positions"][:, 0, :2], axis=0).max(), 0.01)

            # Media are rendered at video_size for people; the policy saw 32x32 top images.
            trajectory = np.asarray(Image.open(out / "trajectory_0.png").convert("RGB"))
            self.assertEqual(trajectory.shape, (128, 160, 3))
            legend_corner = trajectory[40:, 60:]
            for label in ("left fingertips", "right fingertips", "object"):
                rgba = dict(DualArmSimEnv.trajectory_legend)[label]
                self.assertGreater(pixels_near(legend_corner, rgba), 5, f"no {label} swatch in the legend")
            gif = Image.open(out / "episode_0.gif")
            self.assertEqual((gif.n_frames, gif.size), (13, (160, 128)))  # the reset frame plus one per step
            self.assertEqual((gif.info["duration"], gif.info["loop"]), (20, 0))  # real time (50 Hz), looping
            self.assertGreater(red_pixels(np.asarray(gif.convert("RGB"))), 10)  # the cube is in view
            # video_episodes=1: a video of episode 0 only, but the contact sheet has a strip of every episode.
            self.assertEqual(summary["videos"], [str(out / "episode_0.gif"), str(out / "episode_0.mp4")])
            sheet = np.asarray(Image.open(summary["contact_sheet"]).convert("RGB"))
            self.assertEqual(sheet.shape[0], 2 * (SHEET_THUMBNAIL_HW[0] + 4))
            second_strip = sheet[SHEET_THUMBNAIL_HW[0] + 4 :, SHEET_LABEL_WIDTH:]
            self.assertGreater(red_pixels(second_strip), 5)  # episode 1's frames show the cube
            video = iio.imread(out / "episode_0.mp4", plugin="FFMPEG")
            self.assertEqual(video.shape, (13, 128, 160, 3))
            self.assertGreater(red_pixels(video[-1]), 10)

    def test_bad_actions_abort_only_their_episode(self):
        policy = FaultyPolicy()
        summary = evaluate_policy(
            policy, "sim_transfer", 3, max_timesteps=10, camera_names=(), trajectory_image=False, progress=False
        )
        first, second, third = summary["episodes"]
        self.assertEqual((first["steps"], first["success"]), (2, False))
        self.assertIn("shape (1, 16)", first["aborted"])
        self.assertEqual((second["steps"], second["success"]), (1, False))
        self.assertIn("non-finite", second["aborted"])
        self.assertEqual((third["steps"], third["aborted"]), (10, None))
        # Evaluated in eval mode without gradients; the training mode is restored afterwards.
        self.assertEqual(policy.modes_seen, {(False, False)})
        self.assertTrue(policy.training)

    def test_a_stop_before_the_first_episode_finished_writes_no_summary(self):
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(NoEpisodeFinished, "Stopped before the first episode finished: no summary"):
                evaluate_policy(
                    HoldPolicy(), "sim_transfer", 3, max_timesteps=5, camera_names=(), output_dir=tmp, progress=False,
                    should_stop=lambda: True,
                )
            self.assertEqual(list(Path(tmp).iterdir()), [])

    def test_unknown_task_and_camera(self):
        with self.assertRaisesRegex(ValueError, "sim_transfer"):
            evaluate_policy(HoldPolicy(), "sim_nothing", 1, progress=False)
        with self.assertRaisesRegex(ValueError, "r_vis"):
            evaluate_policy(HoldPolicy(), "sim_transfer", 1, camera_names=("eye",), progress=False)
        with self.assertRaisesRegex(ValueError, "front_close"):
            evaluate_policy(
                HoldPolicy(), "sim_transfer", 1, camera_names=(), record_video=True, video_camera="side", progress=False
            )


class NoisyHoldPolicy:
    """Holds position plus torch-sampled noise: its actions depend on the torch RNG, like a generative policy."""

    def reset(self):
        pass

    def select_action(self, obs):
        return torch.as_tensor(obs["qpos"], dtype=torch.float32) + 0.2 * torch.randn(14)


class ParallelRolloutTest(unittest.TestCase):
    def test_parallel_episodes_equal_sequential(self):
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2):
                out = Path(tmp) / f"workers_{workers}"
                summary = evaluate_policy(
                    NoisyHoldPolicy(), "sim_transfer", 3, seed=20, camera_names=(), max_timesteps=15,
                    output_dir=out, trajectory_image=False, progress=False, num_workers=workers,
                )
                actions = [np.load(out / f"trajectory_{i}.npz")["actions"] for i in range(3)]
                results[workers] = (summary, actions)
        (sequential, sequential_actions), (parallel, parallel_actions) = results[1], results[2]
        self.assertEqual(parallel["episodes"], sequential["episodes"])
        self.assertEqual([e["seed"] for e in parallel["episodes"]], [20, 21, 22])
        for seq, par in zip(sequential_actions, parallel_actions):
            np.testing.assert_allclose(par, seq, atol=1e-6)
        # The noise differs between episodes, so equality above is not two runs of one fixed action sequence.
        self.assertGreater(np.abs(sequential_actions[0] - sequential_actions[1]).max(), 0.01)
        self.assertEqual(parallel["trajectory_data"], [str(Path(tmp) / "workers_2" / f"trajectory_{i}.npz") for i in range(3)])

    def test_rejects_zero_workers(self):
        with self.assertRaisesRegex(ValueError, "num_workers"):
            evaluate_policy(HoldPolicy(), "sim_transfer", 1, camera_names=(), progress=False, num_workers=0)


class KickedTransferEnv(DualArmSimEnv):
    """sim_transfer whose physics blows up at the third step of the episode with seed 0 (joint speeds of 1e30)."""

    def reset(self, *, seed=None, options=None):
        self.steps, self.kick = 0, seed == 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.kick and self.steps == 3:
            self._control_env.physics.data.qvel[:] = 1e30
        return super().step(action)


register_task("sim_transfer_kicked", functools.partial(KickedTransferEnv, ALOHA_TASKS["sim_transfer"]))


class DivergedSimulationTest(unittest.TestCase):
    def test_a_diverged_episode_is_a_failure_and_the_evaluation_continues(self):
        summary = evaluate_policy(
            HoldPolicy(), "sim_transfer_kicked", 2, seed=0, max_timesteps=6, camera_names=(), progress=False
        )
        diverged, normal = summary["episodes"]
        self.assertEqual((diverged["steps"], diverged["success"]), (2, False))
        self.assertIn("simulation diverged", diverged["aborted"])
        self.assertEqual((normal["steps"], normal["aborted"]), (6, None))
