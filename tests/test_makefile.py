"""The README's main command: `make demo` records, trains with the committed recipe and evaluates, sized by variables."""
import os
import shutil
import subprocess
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_commands(*variables: str) -> list[str]:
    """The commands `make demo` would run (a dry run; the install step's stamp is assumed present)."""
    # Under `make test` the parent's MAKEFLAGS / MAKELEVEL would make this a sub-make that prints directory lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "demo", *variables],
        cwd=ROOT, capture_output=True, text=True, check=True, env=env,
    )
    return [line for line in result.stdout.replace("\\\n", " ").splitlines() if line.strip()]


@unittest.skipIf(shutil.which("make") is None, "make is not installed")
class DemoTargetTest(unittest.TestCase):
    def test_default_demo_is_the_state_imf_recipe_end_to_end(self):
        record, train, evaluate, report = demo_commands()
        self.assertIn("record_sim_episodes.py task=sim_transfer num_episodes=50 dataset_dir=data/sim_transfer_state_50", record)
        self.assertIn("camera_names=[]", record)
        for part in ("agent=state_imf_attnres", "data=sim_transfer_state", "train=state", "train.resume=auto",
                     "data.dataset_dir=data/sim_transfer_state_50", "hydra.run.dir=runs/demo_state_imf_attnres"):
            self.assertIn(part, train)
        for part in ("ckpt_path=runs/demo_state_imf_attnres/policy.pt", "eval.num_episodes=50", "eval.record_video=true"):
            self.assertIn(part, evaluate)
        self.assertIn("rollouts: runs/demo_state_imf_attnres/eval", report)

    def test_variables_switch_agent_task_and_sizes(self):
        record, train, evaluate, _ = demo_commands("AGENT=state_transformer", "TASK=sim_insertion", "EPISODES=10", "EVAL_EPISODES=3")
        self.assertIn("task=sim_insertion num_episodes=10 dataset_dir=data/sim_insertion_state_10", record)
        self.assertIn("agent=state_transformer data=sim_insertion_state train=state", train)
        self.assertIn("eval.num_episodes=3", evaluate)

    def test_insertion_records_its_recipes_200_demos_and_trains_4000_steps_unless_told(self):
        record, train, _, _ = demo_commands("TASK=sim_insertion")
        self.assertIn("task=sim_insertion num_episodes=200 dataset_dir=data/sim_insertion_state_200", record)
        self.assertIn("data.dataset_dir=data/sim_insertion_state_200", train)
        self.assertIn("train.max_steps=4000 train.rollout_val_freq_epochs=4", train)
        _, train, _, _ = demo_commands("TASK=sim_insertion", "TRAIN_OVERRIDES=train.max_steps=10")
        self.assertIn("train.max_steps=10", train)
        self.assertNotIn("train.max_steps=4000", train)
        _, train, _, _ = demo_commands()
        self.assertNotIn("train.max_steps", train)


if __name__ == "__main__":
    unittest.main()
