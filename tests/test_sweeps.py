"""Training-seed sweeps: `train_vla.py -m` gives each job its own run dir, a stopped sweep continues without
training finished jobs again, and every run of a sweep is scored on the same seeds into one table."""
import json
import os
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

from roboimi.demos.vla_scripts import compare_evals, eval_sweep
from roboimi.evaluation.sweeps import aggregate_sweep, paired_comparisons
from tests.tiny_config import TinyDatasetTestCase, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def train_sweep(overrides: list[str], launcher: str = "joblib") -> subprocess.CompletedProcess:
    """train_vla.py -m run as a file, the way the Makefile's sweep target runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = ROOT / "roboimi" / "demos" / "vla_scripts" / "train_vla.py"
    return subprocess.run(
        [sys.executable, str(script), "-m", f"hydra/launcher={launcher}", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


class SweepTest(TinyDatasetTestCase):
    def sweep_overrides(self, sweep_dir: Path) -> list[str]:
        tiny = tiny_overrides("resnet_imf_attnres", self.data_dir, ["data.task=sim_transfer"])
        return [*tiny, "train.seed=0,1", f"hydra.sweep.dir={sweep_dir}", "train.resume=auto"]

    def test_one_run_dir_per_seed_continued_without_retraining_then_scored_alike(self):
        sweep_dir = Path(self.tmp.name) / "sweep"
        first = train_sweep(self.sweep_overrides(sweep_dir))
        self.assertEqual(first.returncode, 0, first.stderr[-2000:])
        runs = sorted(path.parent.parent for path in sweep_dir.glob("*/.hydra/config.yaml"))
        self.assertEqual([run.name for run in runs], ["0_None_seed0", "1_None_seed1"])
        self.assertTrue(all((run / "policy.pt").is_file() for run in runs))
        self.assertIn("1 torch thread(s)", first.stdout)  # each parallel job trains on one thread

        exported = [(run / "policy.pt").stat().st_mtime_ns for run in runs]
        again = train_sweep(self.sweep_overrides(sweep_dir))  # a continued sweep: nothing left to train
        self.assertEqual(again.returncode, 0, again.stderr[-2000:])
        self.assertEqual(again.stdout.count("Resumed from"), 2)
        self.assertEqual(again.stdout.count("already trained to step 4: nothing to do"), 2)
        self.assertNotIn("from scratch", again.stdout)
        self.assertEqual([(run / "policy.pt").stat().st_mtime_ns for run in runs], exported)  # not exported again

        eval_args = ["eval.num_episodes=2", "eval.max_timesteps=5", "eval.trajectory_image=false"]
        result = eval_sweep.main([f"sweep_dir={sweep_dir}", *eval_args])
        (row,) = result["rows"]
        self.assertEqual((row["experiment"], row["policy"], row["training_seeds"]), ("none", "IMF-1", [0, 1]))
        self.assertEqual(row["pooled"]["n"], 4)
        self.assertEqual(row["episode_seeds"], [1000, 1001])
        label = "eval_final_max_timesteps-5_num_episodes-2_trajectory_image-false"
        self.assertTrue((sweep_dir / f"{label}.md").is_file())
        summaries = [json.loads((run / label / "summary.json").read_text()) for run in runs]
        self.assertEqual([s["training_seed"] for s in summaries], [0, 1])

        (only,) = eval_sweep.main([f"sweep_dir={sweep_dir}", "runs=*seed1", *eval_args])["rows"]  # a part of the sweep
        self.assertEqual(only["training_seeds"], [1])
        self.assertTrue((sweep_dir / f"{label}_runs-seed1.md").is_file())

        paired = compare_evals.main([str(runs[0] / label), str(runs[1] / label)])
        self.assertEqual(paired["n"], 2)
        self.assertLessEqual(paired["interval"][0], paired["difference"])

    @pytest.mark.slow
    def test_the_submitit_launcher_runs_the_same_sweep(self):
        """The SLURM path's launcher plugin, checked with submitit's local executor (about a minute)."""
        sweep_dir = Path(self.tmp.name) / "submitit"
        result = train_sweep(self.sweep_overrides(sweep_dir), launcher="submitit_local")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertEqual(len(list(sweep_dir.glob("*/policy.pt"))), 2)


class AggregateTest(unittest.TestCase):
    def evaluation(self, experiment, policy, seed, outcomes, dataset="data/x"):
        return {"experiment": experiment, "policy": policy, "training_seed": seed, "outcomes": outcomes,
                "seeds": list(range(1000, 1000 + len(outcomes))), "dataset": dataset}

    def test_rows_per_experiment_and_the_paired_difference_over_seeds(self):
        evaluations = [
            self.evaluation("x_imf", "IMF-1", 1, [True, True, False, True]),
            self.evaluation("x_imf", "IMF-1", 0, [True, True, True, True]),
            self.evaluation("x_ddim", "DDIM-10", 0, [True, False, False, True]),
            self.evaluation("x_ddim", "DDIM-10", 1, [True, False, True, False]),
        ]
        imf, ddim = aggregate_sweep(evaluations)  # the IMF policies first
        self.assertEqual((imf["experiment"], imf["training_seeds"], imf["pooled"]["successes"]), ("x_imf", [0, 1], 7))
        self.assertEqual((imf["min"], imf["mean"]), (0.75, 0.875))
        self.assertEqual((ddim["pooled"]["successes"], ddim["episode_seeds"]), (4, [1000, 1003]))
        (pair,) = paired_comparisons(evaluations)
        # Seed 0 against seed 0, seed 1 against seed 1: IMF alone succeeds four times (seed 0, episodes 1-2; seed 1,
        # episodes 1 and 3), DDIM alone once (seed 1, episode 2).
        self.assertEqual((pair["a"], pair["b"]), (["x_imf", "IMF-1"], ["x_ddim", "DDIM-10"]))
        self.assertEqual((pair["a_only"], pair["b_only"], pair["n"]), (4, 1, 8))
        self.assertAlmostEqual(pair["difference"], 3 / 8)
        other_task = [self.evaluation("y_imf", "IMF-1", seed, [True] * 4, dataset="data/y") for seed in (0, 1)]
        self.assertEqual(len(paired_comparisons(evaluations + other_task)), 1)  # runs on other demos are not paired

    def test_runs_of_one_group_on_different_seeds_are_refused(self):
        evaluations = [self.evaluation("x_imf", "IMF-1", 0, [True]), self.evaluation("x_imf", "IMF-1", 1, [True, False])]
        with self.assertRaisesRegex(ValueError, "different episode seeds"):
            aggregate_sweep(evaluations)


class CompareEvalsTest(unittest.TestCase):
    def test_evaluations_on_different_seeds_are_refused(self):
        a = {"episodes": [{"seed": 1000, "success": True}]}
        b = {"episodes": [{"seed": 2000, "success": True}]}
        with self.assertRaisesRegex(SystemExit, "different episode seeds"):
            compare_evals.compare([(a, b)])

    def test_pairs_pool_their_episodes(self):
        def summary(*outcomes):
            return {"episodes": [{"seed": 1000 + i, "success": o} for i, o in enumerate(outcomes)]}

        # pair 1: A alone succeeds once; pair 2: B alone succeeds once, both succeed once
        pooled = compare_evals.compare([(summary(True, False), summary(False, False)),
                                        (summary(False, True), summary(True, True))])
        self.assertEqual((pooled["n"], pooled["a_only"], pooled["b_only"], pooled["both"]), (4, 1, 1, 1))
        self.assertEqual(pooled["difference"], 0.0)
        with self.assertRaisesRegex(SystemExit, "usage"):
            compare_evals.main(["a", "b", "c"])


if __name__ == "__main__":
    unittest.main()
