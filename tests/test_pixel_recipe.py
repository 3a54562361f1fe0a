"""(slow) The one-step pixel recipe can fit its data: trained on 5 top-camera transfer demos, it replays their seeds.

The state recipes have the same check (tests/test_state_only.py); from pixels the policy must also learn to find
the cube in the image, which is what this test retrains.
"""
import tempfile
import unittest

import pytest
import torch

from roboimi.demos.record_sim_episodes import record_episodes
from tests.recipe_runs import rollout_success, train_recipe

torch.set_num_threads(1)


@pytest.mark.slow
class PixelOverfitTest(unittest.TestCase):
    """image_imf_attnres / sim_transfer_top / image_cpu on 5 demos (seeds 0-4), replayed on seeds 0-4 (about 20 min)."""

    STEPS = 3000

    def test_the_one_step_pixel_recipe_replays_its_training_episodes(self):
        with tempfile.TemporaryDirectory() as tmp:
            summary = record_episodes("sim_transfer", 5, f"{tmp}/demos", camera_names=("top",), image_size=(96, 96), progress=False)
            self.assertEqual(summary["next_seed"], 5, "the expert failed a seed; the demos are not seeds 0-4")
            trainer = train_recipe(
                ["agent=image_imf_attnres", "data=sim_transfer_top", "train=image_cpu", f"data.dataset_dir={tmp}/demos",
                 f"train.max_steps={self.STEPS}"],
                f"{tmp}/run",
            )
            self.assertGreaterEqual(rollout_success(trainer, num_episodes=5, seed=0), 0.8)


if __name__ == "__main__":
    unittest.main()
