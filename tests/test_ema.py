"""EMA of the weights: the warm-up decay, buffers copied not averaged, checkpoint key, exact resume, eval weights."""
import unittest

import torch
from torch import nn

from roboimi.vla.training.trainer import Trainer
from roboimi.vla.training.checkpoint import build_agent_from_checkpoint, load_checkpoint
from roboimi.vla.training.ema import build_ema, ema_decay
from tests.tiny_config import TinyDatasetTestCase, compose_tiny


class WarmupDecayTest(unittest.TestCase):
    def test_decay_schedule(self):
        self.assertAlmostEqual(ema_decay(1, 0.75, 0.9999), 1 - 2**-0.75)
        self.assertAlmostEqual(ema_decay(999, 0.75, 0.9999), 1 - 1000**-0.75)
        self.assertEqual(ema_decay(10**9, 0.75, 0.9999), 0.9999)

    def test_updates_follow_the_schedule_and_buffers_are_copied(self):
        model = nn.BatchNorm1d(3)
        ema = build_ema(model, power=0.75, max_decay=0.9999)
        self.assertFalse(any(p.requires_grad for p in ema.parameters()))
        expected = model.weight.detach().clone()
        for update in range(4):
            with torch.no_grad():
                model.weight.add_(1.0)
                model.running_mean.fill_(float(update))
            ema.update_parameters(model)
            if update == 0:
                expected = model.weight.detach().clone()  # the first update copies
            else:
                decay = ema_decay(update, 0.75, 0.9999)
                expected = decay * expected + (1 - decay) * model.weight.detach()
            torch.testing.assert_close(ema.module.weight, expected)
            torch.testing.assert_close(ema.module.running_mean, model.running_mean)
        self.assertLess(ema.module.weight[0].item(), model.weight[0].item())

    def test_bad_settings_name_the_key(self):
        with self.assertRaisesRegex(ValueError, "train.ema_power"):
            build_ema(nn.Linear(1, 1), power=0.0)
        with self.assertRaisesRegex(ValueError, "train.ema_max_decay"):
            build_ema(nn.Linear(1, 1), max_decay=1.0)


class TrainerEmaTest(TinyDatasetTestCase):
    def run_dir(self, name):
        return self.data_dir.parent / name

    def test_checkpoint_holds_the_ema_and_resume_continues_it_exactly(self):
        extra = ["train.max_steps=6", "train.save_freq=3", "train.ema_power=0.5"]
        full = Trainer(compose_tiny("resnet_imf_attnres", self.data_dir, extra), self.run_dir("ema_full"))
        full.fit()
        last = load_checkpoint(self.run_dir("ema_full") / "checkpoints" / "last.pt")
        self.assertEqual(last["ema_updates"], 6)
        self.assertEqual(list(last["ema"]), list(last["agent"]))
        head_keys = [k for k in last["agent"] if k.startswith("noise_pred_net.") and last["agent"][k].numel()]
        self.assertTrue(any(not torch.equal(last["ema"][k], last["agent"][k]) for k in head_keys))

        resume = [*extra, f"train.resume={self.run_dir('ema_full') / 'checkpoints' / 'step_3.pt'}"]
        resumed = Trainer(compose_tiny("resnet_imf_attnres", self.data_dir, resume), self.run_dir("ema_resumed"))
        resumed.fit()
        self.assertEqual(int(resumed.ema.n_averaged), 6)
        for key, value in full.ema.module.state_dict().items():
            torch.testing.assert_close(resumed.ema.module.state_dict()[key], value, rtol=0, atol=0, msg=key)

        policy_path = self.run_dir("ema_full") / "policy.pt"
        policy = load_checkpoint(policy_path)
        self.assertEqual(sorted(policy), ["agent", "config", "global_step", "selection", "weights"])  # no optimizer, no second copy
        self.assertEqual(policy["selection"], {"rule": "as_trained"})
        self.assertEqual((policy["weights"], policy["global_step"]), ("ema", 6))
        for key, value in last["ema"].items():
            torch.testing.assert_close(policy["agent"][key], value, rtol=0, atol=0)
        self.assertLess(policy_path.stat().st_size, 0.5 * (self.run_dir("ema_full") / "checkpoints" / "last.pt").stat().st_size)
        _, _, weights = build_agent_from_checkpoint(policy, torch.device("cpu"), use_ema=False)
        self.assertEqual(weights, "ema")  # the export's only weights, named as such

        agent, _, weights = build_agent_from_checkpoint(last, torch.device("cpu"))
        self.assertEqual(weights, "ema")
        torch.testing.assert_close(agent.noise_pred_net.head.weight, last["ema"]["noise_pred_net.head.weight"])
        agent, _, weights = build_agent_from_checkpoint(last, torch.device("cpu"), use_ema=False)
        self.assertEqual(weights, "raw")
        torch.testing.assert_close(agent.noise_pred_net.head.weight, last["agent"]["noise_pred_net.head.weight"])

    def test_without_ema_rollouts_use_the_trained_weights(self):
        trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.use_ema=false", "train.max_steps=2"]), self.run_dir("no_ema"))
        trainer.fit()
        self.assertIs(trainer.policy, trainer.agent)
        last = load_checkpoint(self.run_dir("no_ema") / "checkpoints" / "last.pt")
        self.assertNotIn("ema", last)
        _, _, weights = build_agent_from_checkpoint(last, torch.device("cpu"))
        self.assertEqual(weights, "raw")


if __name__ == "__main__":
    unittest.main()
