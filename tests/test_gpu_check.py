"""gpu/gpu_check.sh and its helper gpu/gpu_check.py: throughput and run sizing from a run's log, the
report from the stages' files, and the whole check at toy sizes on CPU (--smoke, slow: about 2 minutes)."""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import pytest

from gpu.gpu_check import markdown, steps_that_fit, throughput

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("imf_u", "transformer", "imf_x")


def write_log(run_dir: Path, started: float, rates: list[float], log_freq: int = 10) -> None:
    """logs.json.txt as the trainer writes it: one record every `log_freq` steps at the given rates (steps/s)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    now, lines = started, []
    for i, rate in enumerate(rates, start=1):
        now += log_freq / rate
        lines.append(json.dumps({"step": i * log_freq, "time": now, "train/loss": 1.0, "train/it_per_s": rate}))
    (run_dir / "logs.json.txt").write_text("\n".join(lines) + "\n")


class ThroughputTest(unittest.TestCase):
    def test_steady_rate_leaves_out_the_warm_up_interval(self):
        with tempfile.TemporaryDirectory() as tmp:
            write_log(Path(tmp), 0.0, [0.25, 10.0, 12.0, 11.0])
            measured = throughput(Path(tmp))
        self.assertEqual((measured["steps_per_s"], measured["steps"], measured["log_intervals"]), (11.0, 40, 3))

    def test_no_log_measures_nothing(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assertIsNone(throughput(Path(tmp))["steps_per_s"])
            self.assertIsNone(steps_that_fit(Path(tmp), {"started": 0.0}, 100))

    def test_next_run_repeats_the_warm_up_and_keeps_a_tenth_spare(self):
        with tempfile.TemporaryDirectory() as tmp:
            # Started at 0; the first 10 steps logged at 30 s, then 10 steps/s: a warm-up of 30 - 10 / 10 = 29 s.
            write_log(Path(tmp), 0.0, [10 / 30, 10.0, 10.0])
            self.assertEqual(steps_that_fit(Path(tmp), {"started": 0.0}, 129), 900)  # 0.9 x 100 s x 10 steps/s
            self.assertEqual(steps_that_fit(Path(tmp), {"started": 0.0}, 10), 1)  # less time than the warm-up


class ReportTest(unittest.TestCase):
    def test_report_joins_runs_eval_and_latency(self):
        with tempfile.TemporaryDirectory() as tmp:
            work, out = Path(tmp) / "work", Path(tmp) / "out"
            for name, target, prediction in (("imf_x", "roboimi.vla.agent_imf.IMFVLAAgent", "x"),
                                             ("transformer", "roboimi.vla.agent.VLAAgent", None)):
                run_dir = work / name
                write_log(run_dir, 100.0, [1.0, 8.0, 8.0])
                (run_dir / ".hydra").mkdir()
                agent = {"_target_": target, "head": {"n_emb": 384, "n_layer": 18, "n_head": 1}}
                agent.update({"prediction": prediction} if prediction else {"prediction_type": "epsilon"})
                (run_dir / ".hydra" / "config.yaml").write_text(json.dumps(
                    {"agent": agent, "train": {"batch_size": 80, "lr": 5e-4, "device": "cuda"}}))  # JSON is YAML
                (work / f"{name}.run.json").write_text(json.dumps(
                    {"started": 100.0, "ended": 130.0, "exit_code": 0 if name == "imf_x" else 143,
                     "peak_gpu_memory_bytes": 3 * 2**30}))
            (work / "eval").mkdir()
            (work / "eval" / "summary.json").write_text(json.dumps({
                "checkpoint": "policy.pt", "global_step": 30, "num_episodes": 2, "success_rate": 0.5, "seed": 1000,
                "max_timesteps": 400, "num_workers": 2, "mean_inference_ms": 3.0,
                "episodes": [{"success": True}, {"success": False}]}))
            latency = {"head": "384 x 18", "n_head": 1, "image_size": 96, "cameras": 3, "repeats": 5,
                       "IMF-1": {"end_to_end_ms": 10.0, "head_ms": 2.0},
                       "DDIM-10": {"end_to_end_ms": 30.0, "head_ms": 20.0},
                       "ddim10_over_imf1_end_to_end": 3.0, "ddim10_over_imf1_head": 10.0}
            (work / "latency.json").write_text(json.dumps(latency))
            subprocess.run(
                [sys.executable, str(ROOT / "gpu" / "gpu_check.py"), "report", str(out), "--mode", "gpu",
                 "--run", f"imf_x={work / 'imf_x'}", "--run", f"transformer={work / 'transformer'}",
                 "--eval-dir", str(work / "eval"), "--eval-run", "imf_x", "--latency", str(work / "latency.json")],
                check=True, capture_output=True, timeout=120,
            )
            result = json.loads((out / "gpu_check.json").read_text())
            md = (out / "gpu_check.md").read_text()
        imf, ddpm = result["runs"]["imf_x"], result["runs"]["transformer"]
        self.assertEqual((imf["steps_per_s"], imf["samples_per_s"], imf["steps"]), (8.0, 640.0, 30))
        self.assertAlmostEqual(imf["formal_run_hours"], 150_000 / 8.0 / 3600)
        self.assertEqual((imf["success_rate"], imf["stopped"], imf["prediction"]), (0.5, "max_steps", "x"))
        self.assertEqual((imf["inference_latency_ms"], ddpm["inference_latency_ms"]), (10.0, 30.0))
        self.assertEqual((ddpm["stopped"], ddpm["prediction"], ddpm["success_rate"]), ("SIGTERM (time bound)", "epsilon", None))
        self.assertEqual(imf["peak_gpu_memory_bytes"], 3 * 2**30)
        self.assertEqual(result["eval"]["successes"], 1)
        self.assertTrue(md.startswith("# GPU check (gpu): complete"))
        for text in ("| imf_x | IMFVLAAgent | x | 384 x 18", "| transformer | VLAAgent", "| 3.00 |", "1 / 2 held-out",
                     "3.00x end to end"):
            self.assertIn(text, md)
        self.assertEqual(md, markdown(result))


@pytest.mark.slow
class SmokeRunTest(unittest.TestCase):
    def test_smoke_mode_runs_every_stage_on_cpu(self):
        with tempfile.TemporaryDirectory() as tmp:
            out, work = Path(tmp) / "out", Path(tmp) / "work"
            # TRAIN_FAST empty: the runs keep the train config's own precision and compile settings.
            env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TRAIN_FAST": ""}
            start = time.perf_counter()
            result = subprocess.run(
                ["bash", str(ROOT / "gpu" / "gpu_check.sh"), "--smoke", "--out", str(out), "--work", str(work)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
            )
            elapsed = time.perf_counter() - start
            self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
            report = json.loads((out / "gpu_check.json").read_text())
            md = (out / "gpu_check.md").read_text()
            checkpoint_dirs = {name: (work / "runs" / name / "checkpoints").is_dir() for name in RUNS}
        self.assertLess(elapsed, 300)
        self.assertIn(f"{out / 'gpu_check.json'}", result.stdout)
        self.assertEqual((report["mode"], report["status"]), ("smoke", "complete"))
        versions = report["preflight"]["versions"]
        for package in ("python", "torch", "mujoco", "dm_control", "diffusers", "hydra-core"):
            self.assertTrue(versions[package], package)
        self.assertIn("render_check", report["preflight"])
        self.assertEqual(report["recording"]["episodes"], 2)
        for name in RUNS:
            run = report["runs"][name]
            self.assertGreater(run["steps_per_s"], 0, name)
            self.assertAlmostEqual(run["samples_per_s"], run["steps_per_s"] * run["batch_size"])
            self.assertIsNone(run["peak_gpu_memory_bytes"])  # CPU
            self.assertGreater(run["inference_latency_ms"], 0)
            self.assertIn(f"| {name} |", md)
        self.assertEqual(report["runs"]["imf_u"]["prediction"], "u")
        self.assertEqual(report["runs"]["imf_x"]["prediction"], "x")
        self.assertEqual(report["runs"]["transformer"]["agent"], "VLAAgent")
        self.assertEqual(checkpoint_dirs, {"imf_u": False, "transformer": False, "imf_x": True})  # measure-only: deleted
        success = report["runs"]["imf_x"]["success_rate"]
        self.assertTrue(0.0 <= success <= 1.0)
        self.assertEqual(report["eval"]["num_episodes"], 2)
        for policy in ("IMF-1", "DDIM-10"):
            self.assertGreater(report["latency"][policy]["end_to_end_ms"], 0)
        self.assertGreater(report["stages_s"]["total"], 0)


if __name__ == "__main__":
    unittest.main()
