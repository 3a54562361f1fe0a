"""eval_vla.py rebuilds the agent from a checkpoint alone and writes the rollout artifacts."""
import io
import json
import tempfile
import unittest
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
import yaml

from roboimi.demos.vla_scripts import eval_vla
from roboimi.vla.trainer import Trainer
from tests.synthetic_episodes import write_dataset
from tests.tiny_config import compose_tiny


class EvalVLAArtifactsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.tmp = tempfile.TemporaryDirectory()
        root = Path(cls.tmp.name)
        write_dataset(root / "data", lengths=(8, 8), image_size=(32, 32))
        cls.run_dir = root / "run"
        cfg = compose_tiny("resnet_imf_attnres", root / "data", ["data.task=sim_transfer", "train.max_steps=2"])
        Trainer(cfg, cls.run_dir).fit()
        cls.ckpt = cls.run_dir / "checkpoints" / "last.pt"

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def evaluate(self, name: str, extra: list[str]) -> tuple[dict, Path]:
        out = Path(self.tmp.name) / name
        argv = [f"ckpt_path={self.ckpt}", "eval.num_episodes=2", "eval.max_timesteps=5", f"eval.output_dir={out}", *extra]
        eval_vla.main(argv)
        return json.loads((out / "summary.json").read_text()), out

    def test_summary_timings_trajectories_and_video(self):
        summary, out = self.evaluate("with_video", ["eval.record_video=true"])
        self.assertEqual(summary["num_episodes"], 2)
        self.assertEqual(summary["global_step"], 2)
        for key in ("success_rate", "mean_return", "mean_inference_ms", "inference_ms", "env_step_ms", "loop_total_ms"):
            self.assertIn(key, summary)
        self.assertGreater(summary["mean_inference_ms"], 0.0)
        self.assertEqual([e["seed"] for e in summary["episodes"]], [1000, 1001])
        self.assertEqual([e["steps"] for e in summary["episodes"]], [5, 5])

        trajectory = np.load(out / "trajectory_0.npz")
        self.assertTrue(any(arr.shape[0] == 5 for arr in trajectory.values()))
        self.assertTrue((out / "trajectory_0.png").is_file())
        suffixes = {Path(p).suffix for p in summary["videos"]}
        self.assertEqual(suffixes, {".gif", ".mp4"})

    def test_the_policy_export_evaluates_like_the_checkpoint(self):
        from_checkpoint, _ = self.evaluate("from_last", [])
        self.ckpt, checkpoint = self.run_dir / "policy.pt", self.ckpt
        try:
            from_export, _ = self.evaluate("from_export", [])
        finally:
            self.ckpt = checkpoint
        self.assertEqual(from_export["weights"], "ema")
        self.assertEqual(from_export["episodes"], from_checkpoint["episodes"])

    def test_no_video_unless_asked(self):
        summary, out = self.evaluate("no_video", [])
        self.assertEqual(summary.get("videos", []), [])
        self.assertEqual(list(out.glob("*.gif")) + list(out.glob("*.mp4")), [])

    def test_report_and_swanlab_log_next_to_the_training_run(self):
        printed = io.StringIO()
        with redirect_stdout(printed):
            summary, out = self.evaluate("swanlab", ["eval.swanlab=true", "eval.record_video=true", "eval.video_size=[64,64]"])
        report = printed.getvalue()
        self.assertRegex(report, r"success\s+0 / 2 \(0\.0 %\) on seeds 1000-1001")
        self.assertIn(str(out / "summary.json"), report)
        self.assertIn(str(out / "contact_sheet.png"), report)
        swanlog = self.run_dir / "swanlog"
        configs = [yaml.safe_load(p.read_text()) for p in swanlog.rglob("config.yaml")]
        self.assertEqual(len(configs), 1)
        self.assertEqual(configs[0]["eval.num_episodes"]["value"], 2)
        self.assertTrue(any(p.suffix == ".gif" for p in swanlog.rglob("*")), "no rollout video in the SwanLab run")
        eval_log = [json.loads(line) for line in (self.run_dir / "eval_logs.json.txt").read_text().splitlines()]
        self.assertEqual((eval_log[0]["step"], eval_log[0]["eval/success_rate"]), (2, 0.0))

    def test_unknown_key_is_rejected_with_usage(self):
        with self.assertRaisesRegex(SystemExit, "unknown keys: \\['train.lr'\\]"):
            eval_vla.main([f"ckpt_path={self.ckpt}", "train.lr=1"])


if __name__ == "__main__":
    unittest.main()
