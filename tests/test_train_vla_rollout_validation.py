"""Periodic rollout validation wiring of the trainer: epoch frequency, final weights, on-checkpoint flag, episode count."""
import json
import subprocess
import sys
import unittest
from pathlib import Path


from roboimi.vla.training.checkpoint import load_checkpoint, weight_selection
from roboimi.vla.training.trainer import Trainer
from tests.tiny_config import TinyDatasetTestCase, compose_tiny

# 2 episodes x 6 frames at batch 2 -> 6 optimizer steps per epoch.
STEPS_PER_EPOCH = 6
ROOT = Path(__file__).resolve().parents[1]
ROLLOUT = ["data.task=sim_transfer", "eval.max_timesteps=3", "train.rollout_num_episodes=2"]


def rollout_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "logs.json.txt").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "rollout/success_rate" in r]


class RolloutValidationTest(TinyDatasetTestCase):
    EPISODE_LENGTHS = (6, 6)

    def train(self, name: str, overrides: list[str]) -> tuple[Trainer, Path]:
        run_dir = Path(self.tmp.name) / name
        cfg = compose_tiny("resnet_imf_attnres", self.data_dir, [*ROLLOUT, "train.log_freq=100", *overrides])
        trainer = Trainer(cfg, run_dir)
        trainer.fit()
        return trainer, run_dir

    def test_every_epoch(self):
        trainer, run_dir = self.train("every_epoch", ["train.max_steps=13", "train.save_freq=100", "train.rollout_val_freq_epochs=1"])
        # After every epoch, and once more on the final weights.
        self.assertEqual(rollout_steps(run_dir), [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 13])
        summary = json.loads((run_dir / "rollouts" / f"step_{STEPS_PER_EPOCH}" / "summary.json").read_text())
        self.assertEqual(summary["num_episodes"], 2)
        self.assertEqual(len(summary["episodes"]), 2)
        self.assertTrue(trainer.agent.training, "agent left in eval mode after validation")
        self.assertTrue((run_dir / "checkpoints" / "best_rollout.pt").is_file())

    def test_validation_plays_its_own_seeds_and_the_best_weights_record_them(self):
        """Selection never sees the scored seeds (eval.seed, 1000 on): validation plays train.rollout_val_seed on, and
        best_rollout.pt says which seeds picked it; the other checkpoints were picked by nothing."""
        _, run_dir = self.train("own_seeds", ["train.max_steps=6", "train.save_freq=100", "train.rollout_val_freq_epochs=1"])
        summary = json.loads((run_dir / "rollouts" / f"step_{STEPS_PER_EPOCH}" / "summary.json").read_text())
        self.assertEqual([e["seed"] for e in summary["episodes"]], [100000, 100001])
        best = load_checkpoint(run_dir / "checkpoints" / "best_rollout.pt")
        self.assertEqual(weight_selection(best), {"rule": "best_rollout", "seeds": [100000, 100001]})
        self.assertEqual(weight_selection(load_checkpoint(run_dir / "checkpoints" / "last.pt")), {"rule": "as_trained"})
        self.assertEqual(weight_selection(load_checkpoint(run_dir / "policy.pt")), {"rule": "as_trained"})

    def test_the_simulator_stays_out_of_the_training_process(self):
        """Validation rolls out in a spawned process, so the trainer never loads MuJoCo and its GL context: they would
        stay resident for the rest of a long run (its memory would step up at the first validation)."""
        run_dir = Path(self.tmp.name) / "separate_process"
        script = (
            "import json, sys\n"
            "from roboimi.vla.training.trainer import Trainer\n"
            "from tests.tiny_config import compose_tiny\n"
            f"cfg = compose_tiny('resnet_imf_attnres', {str(self.data_dir)!r}, {[*ROLLOUT, 'train.max_steps=6', 'train.rollout_val_freq_epochs=1']!r})\n"
            f"Trainer(cfg, {str(run_dir)!r}).fit()\n"
            "print(json.dumps({'simulator_loaded': 'mujoco' in sys.modules}))\n"
        )
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertEqual(json.loads(result.stdout.strip().splitlines()[-1]), {"simulator_loaded": False})
        self.assertEqual(rollout_steps(run_dir), [STEPS_PER_EPOCH])
        summary = json.loads((run_dir / "rollouts" / f"step_{STEPS_PER_EPOCH}" / "summary.json").read_text())
        self.assertEqual([e["seed"] for e in summary["episodes"]], [100000, 100001])

    def test_every_second_epoch(self):
        _, run_dir = self.train("second_epoch", ["train.max_steps=13", "train.save_freq=100", "train.rollout_val_freq_epochs=2"])
        self.assertEqual(rollout_steps(run_dir), [2 * STEPS_PER_EPOCH, 13])

    def test_a_run_ending_on_an_epoch_boundary_validates_its_final_weights_once(self):
        _, run_dir = self.train("boundary", ["train.max_steps=12", "train.save_freq=100", "train.rollout_val_freq_epochs=1"])
        self.assertEqual(rollout_steps(run_dir), [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH])

    def test_on_checkpoint_only(self):
        _, run_dir = self.train(
            "on_checkpoint",
            ["train.max_steps=8", "train.save_freq=4", "train.rollout_val_freq_epochs=0", "train.rollout_validate_on_checkpoint=true"],
        )
        self.assertEqual(rollout_steps(run_dir), [4, 8])

    def test_disabled(self):
        _, run_dir = self.train("disabled", ["train.max_steps=7", "train.rollout_val_freq_epochs=0"])
        self.assertEqual(rollout_steps(run_dir), [])
        self.assertFalse((run_dir / "rollouts").exists())


if __name__ == "__main__":
    unittest.main()
