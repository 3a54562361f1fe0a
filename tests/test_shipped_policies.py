"""The trained policies shipped under policies/ load safely and act with the current code.

Each one is rebuilt from its file alone (weights_only load, RoboIMI classes only) and answers one observation of its
own task, rendered by the real simulator with its cameras; a code change that breaks a shipped policy fails here.
"""
import re
import unittest
from pathlib import Path

import numpy as np
import torch

from roboimi.envs.registry import make_env
from roboimi.vla.checkpoint import build_agent_from_checkpoint, load_checkpoint

POLICIES = Path(__file__).resolve().parents[1] / "policies"
MAX_BYTES = 5 * 2**20


class ShippedPoliciesTest(unittest.TestCase):
    def test_the_readme_lists_exactly_the_shipped_files(self):
        listed = set(re.findall(r"`(\w+\.pt)`", (POLICIES / "README.md").read_text()))
        self.assertEqual(listed, {path.name for path in POLICIES.glob("*.pt")})

    def test_every_shipped_policy_loads_and_acts_in_its_task(self):
        torch.set_num_threads(1)
        paths = sorted(POLICIES.glob("*.pt"))
        self.assertTrue(paths, "no policy shipped under policies/")
        for path in paths:
            with self.subTest(policy=path.name):
                self.assertLessEqual(path.stat().st_size, MAX_BYTES)
                checkpoint = load_checkpoint(path)
                agent, cfg, weights = build_agent_from_checkpoint(checkpoint, torch.device("cpu"), source=path)
                agent.eval()
                spec = agent.observation_spec
                env = make_env(cfg.data.task, image_size=spec.image_shape or (96, 96), camera_names=spec.camera_names)
                try:
                    obs, _ = env.reset(seed=1000)
                    agent.reset()
                    action = torch.as_tensor(agent.select_action(obs))
                finally:
                    env.close()
                self.assertEqual(tuple(action.shape), (cfg.agent.action_dim,))
                self.assertTrue(np.isfinite(action.numpy()).all())


if __name__ == "__main__":
    unittest.main()
