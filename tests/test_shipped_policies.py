"""The trained policies shipped in policies/ still load (weights only) and act with today's code."""
import re
import unittest
from pathlib import Path

import pytest
import torch

from roboimi.envs.registry import make_env
from roboimi.vla.training.checkpoint import build_agent_from_checkpoint, load_checkpoint
from roboimi.evaluation.agent_policy import AgentPolicy, evaluate_agent

POLICIES = Path(__file__).resolve().parents[1] / "policies"
MAX_BYTES = 5 * 2**20


def listed_policies() -> list[str]:
    """The .pt files policies/README.md's table names."""
    return re.findall(r"^\| `([\w.]+\.pt)` \|", (POLICIES / "README.md").read_text(), flags=re.MULTILINE)


class ShippedPoliciesTest(unittest.TestCase):
    def test_the_readme_lists_exactly_the_shipped_files(self):
        self.assertTrue(listed_policies())
        self.assertEqual(sorted(listed_policies()), sorted(p.name for p in POLICIES.glob("*.pt")))

    def test_every_policy_loads_and_selects_an_action(self):
        for name in listed_policies():
            with self.subTest(policy=name):
                path = POLICIES / name
                self.assertLessEqual(path.stat().st_size, MAX_BYTES)
                agent, cfg, weights = build_agent_from_checkpoint(load_checkpoint(path), torch.device("cpu"), source=path)
                agent.eval()
                spec = agent.observation_spec
                env = make_env(cfg.data.task, image_size=spec.image_shape or (96, 96), camera_names=spec.camera_names)
                try:
                    obs, _ = env.reset(seed=0)  # the observation the policy acts on in a rollout
                finally:
                    env.close()
                action = AgentPolicy(agent).select_action(obs)
                self.assertEqual(tuple(action.shape), (agent.action_dim,))
                self.assertTrue(torch.isfinite(torch.as_tensor(action)).all())

    @pytest.mark.slow
    def test_the_one_step_pixel_policies_solve_their_tasks(self):
        """Each one-step pixel policy on 20 held-out seeds (2000-2019), about 3 min (top), 6 min (three cameras) and
        2.5 min (insertion), against a floor under its measured success there (top camera 48 / 50 on 2000-2049, three
        cameras 15 / 20, insertion 9 / 20)."""
        for name, floor in (
            ("sim_transfer_top_imf.pt", 0.85),
            ("sim_transfer_3cam_imf.pt", 0.7),
            ("sim_insertion_pixels_imf.pt", 0.25),
        ):
            with self.subTest(policy=name):
                path = POLICIES / name
                agent, cfg, _ = build_agent_from_checkpoint(load_checkpoint(path), torch.device("cpu"), source=path)
                cfg.eval.num_workers = 1
                summary = evaluate_agent(
                    agent.eval(), cfg, num_episodes=20, seed=2000, output_dir=None, record_video=False, progress=False
                )
                self.assertGreaterEqual(summary["success_rate"], floor)


if __name__ == "__main__":
    unittest.main()
