"""benchmarks/plan_spread.py: the spread and errors of a policy's plans against their demonstrations."""
import unittest

import torch

from benchmarks.plan_spread import plan_errors
from tests.agent_fixtures import NUM_ACTION_STEPS, OBS_HORIZON, make_agent, make_batch

torch.set_num_threads(1)


class PlanErrorsTest(unittest.TestCase):
    def test_a_deterministic_policy_has_no_spread_and_one_error(self):
        agent = make_agent(noise_scale=0.0).eval()
        batch = make_batch(batch=3)
        result = plan_errors(agent, batch, draws=4)
        self.assertEqual(result["spread"], 0.0)
        window = slice(OBS_HORIZON - 1, OBS_HORIZON - 1 + NUM_ACTION_STEPS)
        expected = (agent.predict_action(batch)[:, window] - batch["action"][:, window]).abs().mean().item()
        for key in ("|draw - demo|", "|mean - demo|", "|zero noise - demo|"):
            self.assertAlmostEqual(result[key], expected, places=5, msg=key)

    def test_noise_spreads_the_plans_and_one_draw_errs_at_least_as_much_as_their_mean(self):
        agent = make_agent().eval()
        torch.manual_seed(0)
        result = plan_errors(agent, make_batch(batch=3), draws=8)
        self.assertGreater(result["spread"], 0.0)
        self.assertGreaterEqual(result["|draw - demo|"], result["|mean - demo|"])  # |.| is convex


if __name__ == "__main__":
    unittest.main()
