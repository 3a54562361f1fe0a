"""The README's main command: `make demo` records, trains and evaluates one experiment; `make sweep` one per seed."""
import os
import shutil
import subprocess
import unittest
from pathlib import Path

from roboimi.vla.experiments import recording_settings

ROOT = Path(__file__).resolve().parents[1]


def make_commands(target: str, *variables: str) -> list[str]:
    """The commands `make <target>` would run (a dry run; the install step's stamp is assumed present)."""
    # Under `make test` the parent's MAKEFLAGS / MAKELEVEL would make this a sub-make that prints directory lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", target, *variables],
        cwd=ROOT, capture_output=True, text=True, check=True, env=env,
    )
    return [line for line in result.stdout.replace("\\\n", " ").splitlines() if line.strip()]


@unittest.skipIf(shutil.which("make") is None, "make is not installed")
class MakeTargetsTest(unittest.TestCase):
    def test_default_demo_is_the_state_imf_experiment_end_to_end(self):
        record, train, evaluate, report = make_commands("demo")
        self.assertIn("record_sim_episodes.py experiment=state_transfer_imf", record)
        for part in ("experiment=state_transfer_imf", "train.resume=auto", "hydra.run.dir=runs/demo_state_transfer_imf"):
            self.assertIn(part, train)
        for part in ("ckpt_path=runs/demo_state_transfer_imf/policy.pt", "eval.num_episodes=50", "eval.record_video=true"):
            self.assertIn(part, evaluate)
        self.assertIn("rollouts: runs/demo_state_transfer_imf/eval", report)
        # The demo records where the experiment trains: 50 camera-less sim_transfer demos.
        self.assertEqual(
            recording_settings("state_transfer_imf"),
            {"task": "sim_transfer", "num_episodes": 50, "dataset_dir": "data/sim_transfer_state_50",
             "camera_names": [], "image_size": [96, 96]},
        )

    def test_variables_switch_the_experiment_and_the_episodes(self):
        record, train, evaluate, _ = make_commands("demo", "EXPERIMENT=state_insertion_ddim", "EVAL_EPISODES=3")
        self.assertIn("experiment=state_insertion_ddim", record)
        self.assertIn("experiment=state_insertion_ddim hydra.run.dir=runs/demo_state_insertion_ddim", train)
        self.assertIn("eval.num_episodes=3", evaluate)

    def test_sweep_trains_one_run_per_seed_in_parallel_then_scores_them_alike(self):
        record, train, evaluate = make_commands("sweep", "EXPERIMENT=top_transfer_imf", "SEEDS=0,1")
        self.assertIn("experiment=top_transfer_imf", record)
        for part in ("OMP_NUM_THREADS=1", "train_vla.py -m experiment=top_transfer_imf train.seed=0,1",
                     "hydra/launcher=joblib", "hydra.sweep.dir=runs/sweeps/top_transfer_imf", "train.resume=auto"):
            self.assertIn(part, train)
        self.assertIn("eval_sweep.py sweep_dir=runs/sweeps/top_transfer_imf eval.num_episodes=50", evaluate)


if __name__ == "__main__":
    unittest.main()
