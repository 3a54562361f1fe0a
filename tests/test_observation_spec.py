"""ObservationSpec: the one state-assembly rule, camera and image-size checks, and the spec an agent carries."""
import unittest

import numpy as np
import torch

from roboimi.vla.training.checkpoint import upgrade_config
from roboimi.vla.observation_spec import ObservationSpec, assemble_state
from tests.agent_fixtures import CAMS, make_agent

SPEC = ObservationSpec(camera_names=["top", "front"], image_shape=[32, 24], state_keys=["env_state", "qpos"])


class StateAssemblyTest(unittest.TestCase):
    def test_keys_concatenate_in_order_for_steps_and_episodes(self):
        step = {"qpos": np.array([1.0, 2.0]), "env_state": np.array([9.0]), "qvel": np.zeros(2)}
        np.testing.assert_array_equal(SPEC.state(step), [9.0, 1.0, 2.0])
        self.assertEqual(SPEC.state(step).dtype, np.float32)
        episode = {"qpos": np.ones((5, 2)), "env_state": np.zeros((5, 1))}
        np.testing.assert_array_equal(SPEC.state(episode)[0], [0.0, 1.0, 1.0])

    def test_missing_key_is_named_with_what_there_is(self):
        with self.assertRaisesRegex(KeyError, r"Episode x lacks state key\(s\) \['env_state'\].*\['qpos'\]"):
            assemble_state({"qpos": np.zeros(2)}, ("qpos", "env_state"), "Episode x")


class ImageCheckTest(unittest.TestCase):
    def test_missing_camera_names_given_ones(self):
        with self.assertRaisesRegex(ValueError, r"\['front'\].*\['top'\]"):
            SPEC.check_images({"top": torch.zeros(1, 2, 3, 32, 24)}, "The batch")

    def test_size_is_checked_for_batches_and_env_frames(self):
        SPEC.check_images({cam: torch.zeros(1, 2, 3, 32, 24) for cam in SPEC.camera_names}, "The batch")
        SPEC.check_images({cam: np.zeros((32, 24, 3)) for cam in SPEC.camera_names}, "The env", channels_last=True)
        with self.assertRaisesRegex(ValueError, r"The env: camera 'top' has frames of \[24, 32\].*takes \[32, 24\]"):
            SPEC.check_images({cam: np.zeros((24, 32, 3)) for cam in SPEC.camera_names}, "The env", channels_last=True)

    def test_cameras_without_a_shape_are_refused(self):
        with self.assertRaisesRegex(ValueError, "data.image_shape"):
            ObservationSpec(camera_names=["top"], image_shape=None, state_keys=["qpos"])


class AgentSpecTest(unittest.TestCase):
    def test_agent_spec_comes_from_its_cameras_encoder_and_state_keys(self):
        agent = make_agent(state_keys=("qpos",))
        self.assertEqual(
            agent.observation_spec.as_dict(),
            {"camera_names": list(CAMS), "image_shape": [32, 32], "state_keys": ["qpos"]},
        )

    def test_batch_images_of_another_size_are_refused(self):
        agent = make_agent()
        images = {cam: torch.zeros(1, 2, 3, 16, 16, dtype=torch.uint8) for cam in CAMS}
        with self.assertRaisesRegex(ValueError, r"batch's images: camera 'top' has frames of \[16, 16\]"):
            agent.encode_observation(images, torch.zeros(1, 2, 3))


class CheckpointUpgradeTest(unittest.TestCase):
    OLD = {
        "agent": {"camera_names": ["top"], "vision_backbone": {"resize_shape": None, "camera_names": ["top"]}},
        "data": {"state_keys": ["qpos", "env_state"]},
    }

    def test_state_keys_come_from_data_and_a_null_resize_is_dropped(self):
        upgraded = upgrade_config(self.OLD)
        self.assertEqual(upgraded["agent"]["state_keys"], ["qpos", "env_state"])
        self.assertNotIn("resize_shape", upgraded["agent"]["vision_backbone"])
        self.assertIn("resize_shape", self.OLD["agent"]["vision_backbone"])  # the checkpoint's dict is untouched

    def test_an_encoder_that_resized_is_refused_with_the_fix(self):
        old = {"agent": {"vision_backbone": {"resize_shape": [64, 64]}}, "data": {"state_keys": ["qpos"]}}
        with self.assertRaisesRegex(ValueError, r"resize_shape.*data.image_resize_shape"):
            upgrade_config(old)
