"""eval_vla.py rebuilds the agent from a checkpoint alone and writes the rollout artifacts."""
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from roboimi.demos.vla_scripts import eval_vla
from roboimi.evaluation.success_stats import wilson_interval
from roboimi.vla.training.checkpoint import load_checkpoint, save_checkpoint
from roboimi.vla.training.run_dir import RunDirLock
from roboimi.vla.training.trainer import Trainer
from tests.synthetic_episodes import write_dataset
from tests.tiny_config import compose_tiny

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "roboimi" / "demos" / "vla_scripts" / "eval_vla.py"
SCRIPT_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """eval_vla.py run as a file, the way the Makefile and the benchmarks run it."""
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, cwd=cwd, env=SCRIPT_ENV, capture_output=True, text=True, timeout=300)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while being read
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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

    def test_default_output_dir_is_the_runs_eval_dir_for_both_checkpoint_kinds(self):
        for ckpt in (self.run_dir / "policy.pt", self.run_dir / "checkpoints" / "last.pt"):
            with self.subTest(ckpt=ckpt.name):
                summary = eval_vla.main([f"ckpt_path={ckpt}", "eval.num_episodes=1", "eval.max_timesteps=2"])
                self.assertEqual(Path(summary["summary_path"]), self.run_dir / "eval" / "summary.json")

    def test_no_video_unless_asked(self):
        summary, out = self.evaluate("no_video", [])
        self.assertEqual(summary.get("videos", []), [])
        self.assertEqual(list(out.glob("*.gif")) + list(out.glob("*.mp4")), [])

    def test_report_and_swanlab_log_next_to_the_training_run(self):
        printed = io.StringIO()
        with redirect_stdout(printed):
            summary, out = self.evaluate("swanlab", ["eval.swanlab=true", "eval.record_video=true", "eval.video_size=[64,64]"])
        report = printed.getvalue()
        self.assertRegex(report, r"success\s+0 / 2 \(0 %, 95 % CI 0-66 %\) on seeds 1000-1001")
        self.assertRegex(report, r"episodes reaching reward\s+>= 1: 0, >= 2: 0, >= 3: 0, >= 4: 0")
        self.assertRegex(report, r"selected as\s+the weights of their step, picked by nothing")
        self.assertNotIn("WARNING", report)
        self.assertEqual((summary["successes"], summary["stage_counts"]), (0, [0, 0, 0, 0]))
        self.assertAlmostEqual(summary["success_interval"][1], 0.6576, places=3)  # Wilson, 0 of 2
        self.assertIn(str(out / "summary.json"), report)
        self.assertIn(str(out / "contact_sheet.png"), report)
        swanlog = self.run_dir / "swanlog"
        configs = [yaml.safe_load(p.read_text()) for p in swanlog.rglob("config.yaml")]
        self.assertEqual(len(configs), 1)
        self.assertEqual(configs[0]["eval.num_episodes"]["value"], 2)
        self.assertTrue(any(p.suffix == ".gif" for p in swanlog.rglob("*")), "no rollout video in the SwanLab run")
        eval_log = [json.loads(line) for line in (self.run_dir / "eval_logs.json.txt").read_text().splitlines()]
        self.assertEqual((eval_log[0]["step"], eval_log[0]["eval/success_rate"]), (2, 0.0))

    def test_scoring_on_the_seeds_the_weights_were_selected_on_is_named(self):
        checkpoint = load_checkpoint(self.ckpt)
        picked = {**checkpoint, "selection": {"rule": "best_rollout", "seeds": [1001, 1010]}}
        old = {key: value for key, value in checkpoint.items() if key != "selection"}  # a file from before the record
        old["config"] = {**old["config"], "train": {**old["config"]["train"], "rollout_val_freq_epochs": 5}}
        del old["config"]["train"]["rollout_val_seed"]  # its run validated on eval.seed (1000), 5 episodes
        cases = [
            (picked, [], r"1 of the scored seeds \(1001-1001\) are seeds these weights were selected on", 1),
            (picked, ["eval.seed=2000"], None, 0),
            (old, [], r"2 of the scored seeds \(1000-1001\) are seeds these weights may have been selected on", 2),
        ]
        for number, (payload, extra, warning, overlap) in enumerate(cases):
            with self.subTest(case=number):
                self.ckpt, trained = Path(self.tmp.name) / f"picked_{number}.pt", self.ckpt
                save_checkpoint(self.ckpt, payload)
                printed = io.StringIO()
                try:
                    with redirect_stdout(printed):
                        summary, _ = self.evaluate(f"picked_{number}", extra)
                finally:
                    self.ckpt = trained
                self.assertEqual(summary["selection_overlap"], overlap)
                if warning is None:
                    self.assertNotIn("WARNING", printed.getvalue())
                else:
                    self.assertRegex(printed.getvalue(), warning)

    def test_a_busy_output_dir_is_refused_and_a_rerun_leaves_nothing_of_the_earlier_one(self):
        out = Path(self.tmp.name) / "shared"
        self.evaluate("shared", ["eval.num_episodes=2"])
        self.assertTrue((out / "trajectory_1.npz").is_file())
        other = RunDirLock(out)  # another evaluation writing there
        try:
            with self.assertRaisesRegex(RuntimeError, r"in use by another evaluation .*another eval\.output_dir"):
                self.evaluate("shared", ["eval.num_episodes=1"])
        finally:
            other.release()
        summary, _ = self.evaluate("shared", ["eval.num_episodes=1"])
        self.assertEqual(summary["num_episodes"], 1)
        self.assertEqual(sorted(p.name for p in out.glob("trajectory_*")), ["trajectory_0.npz", "trajectory_0.png"])

    def test_an_unknown_video_camera_is_the_last_error_on_the_screen(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_script(
                [f"ckpt_path={self.ckpt}", "eval.record_video=true", "eval.video_camera=nope", "device=cpu"], Path(tmp)
            )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("ValueError: Unknown camera 'nope'; available cameras: r_vis, top, front", result.stderr)
        # The env's renderer is closed before the error is raised, so its GL context reports nothing at exit.
        self.assertNotIn("Exception ignored", result.stderr)
        self.assertNotIn("EGLError", result.stderr)

    def test_ctrl_c_ends_the_rollouts_and_summarizes_the_finished_episodes(self):
        out = Path(self.tmp.name) / "interrupted"

        def interrupt_after_the_first_episode():
            deadline = time.monotonic() + 120
            while not (out / "trajectory_0.npz").exists():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in a terminal

        threading.Thread(target=interrupt_after_the_first_episode, daemon=True).start()
        argv = [f"ckpt_path={self.ckpt}", "eval.num_episodes=1000", "eval.max_timesteps=5", f"eval.output_dir={out}"]
        with redirect_stdout(io.StringIO()) as printed, self.assertRaises(SystemExit) as stopped:
            eval_vla.main(argv)
        self.assertEqual(stopped.exception.code, 128 + signal.SIGINT)
        summary = json.loads((out / "summary.json").read_text())
        finished = summary["num_episodes"]
        self.assertEqual([summary[key] for key in ("partial", "requested_episodes", "stopped_by")], [True, 1000, "SIGINT"])
        self.assertGreaterEqual(finished, 1)
        self.assertEqual([e["seed"] for e in summary["episodes"]], list(range(1000, 1000 + finished)))
        self.assertEqual(summary["success_interval"], list(wilson_interval(summary["successes"], finished)))
        report = printed.getvalue()
        self.assertRegex(report, rf"on seeds 1000-{999 + finished}\n")
        self.assertRegex(report, rf"PARTIAL\s+stopped by SIGINT after {finished} of 1000 episodes: the success rate is "
                                 rf"over the {finished} finished ones")

    @pytest.mark.slow
    def test_sigterm_ends_the_workers_and_summarizes_the_finished_episodes(self):
        """eval_vla.py as a process with two rollout workers (10-15 s on 2 CPU cores)."""
        out = Path(self.tmp.name) / "stopped"
        child = subprocess.Popen(
            [sys.executable, str(SCRIPT), f"ckpt_path={self.ckpt}", "eval.num_episodes=1000", "eval.num_workers=2",
             "eval.max_timesteps=30", "eval.trajectory_image=false", f"eval.output_dir={out}", "device=cpu"],
            env=SCRIPT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        stderr = []
        first_episode_done = threading.Event()

        def read_stderr():  # the progress bar counts the episodes the evaluation holds, in order
            for chunk in iter(lambda: child.stderr.read(64), ""):
                stderr.append(chunk)
                if re.search(r"\b[1-9]\d*/1000\b", "".join(stderr)):
                    first_episode_done.set()

        reader = threading.Thread(target=read_stderr)
        reader.start()
        try:
            self.assertTrue(first_episode_done.wait(timeout=240), "".join(stderr))
            workers = child_pids(child.pid)
            self.assertGreaterEqual(len(workers), 2)  # the rollout workers (and multiprocessing's resource tracker)
            child.send_signal(signal.SIGTERM)
            stdout = child.stdout.read()
            child.wait(timeout=120)
        finally:
            child.kill()
            reader.join()  # until every process holding the stderr pipe, the resource tracker too, has closed it
        stderr = "".join(stderr)
        self.assertEqual(child.returncode, 128 + signal.SIGTERM, stderr[-3000:])
        summary = json.loads((out / "summary.json").read_text())
        finished = summary["num_episodes"]
        self.assertTrue(summary["partial"])
        self.assertGreaterEqual(finished, 1)
        self.assertEqual((summary["requested_episodes"], summary["stopped_by"]), (1000, "SIGTERM"))
        self.assertEqual([e["seed"] for e in summary["episodes"]], list(range(1000, 1000 + finished)))
        self.assertEqual(summary["success_rate"], summary["successes"] / finished)
        # Only the files of the summarized episodes remain, whatever the workers were writing when they were ended.
        expected = sorted(f"trajectory_{i}.npz" for i in range(finished))
        self.assertEqual(sorted(p.name for p in out.glob("trajectory_*")), expected)
        self.assertRegex(stdout, rf"PARTIAL\s+stopped by SIGTERM after {finished} of 1000 episodes")
        deadline = time.monotonic() + 10  # the last of them may still be on its way out
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual([pid for pid in workers if running(pid)], [])
        self.assertNotIn("leaked semaphore", stderr)
        self.assertNotIn("Traceback", stderr)

        again, _ = self.evaluate("stopped", [])  # the next evaluation there starts clean
        self.assertFalse(again["partial"])
        expected = ["trajectory_0.npz", "trajectory_0.png", "trajectory_1.npz", "trajectory_1.png"]
        self.assertEqual(sorted(p.name for p in out.glob("trajectory_*")), expected)

    def test_eval_settings_are_named_before_the_checkpoint_is_read(self):
        cases = {
            "eval.num_episodes=two": r"eval\.num_episodes='two' is invalid: an integer >= 1",
            "eval.num_episodes=0": r"eval\.num_episodes=0 is invalid",
            "eval.num_workers=-3": r"eval\.num_workers=-3 is invalid",
            f"eval.output_dir={self.ckpt}": r"eval\.output_dir=.* is invalid: .*not an existing file",
            "eval.use_ema=maybe": r"eval\.use_ema='maybe' is invalid: true or false",
        }
        for override, message in cases.items():
            with self.subTest(override=override), self.assertRaisesRegex(ValueError, message):
                eval_vla.main(["ckpt_path=does/not/exist.pt", override])
        if not torch.cuda.is_available():
            with self.assertRaisesRegex(RuntimeError, r"device=cuda was asked for.*Use device=auto or device=cpu"):
                eval_vla.main([f"ckpt_path={self.ckpt}", "device=cuda"])

    def test_unknown_key_is_rejected_with_usage(self):
        allowed = (
            r"sets only ckpt_path, device, agent.inference_steps, agent.num_action_steps, agent.temporal_ensemble_coeff, "
            r"agent.noise_scale "
            r"and eval.<key> for <key> in: task, num_episodes"
        )
        with self.assertRaisesRegex(SystemExit, r"unknown keys: \['train.lr'\]\. .*" + allowed) as rejected:
            eval_vla.main([f"ckpt_path={self.ckpt}", "train.lr=1"])
        usage = str(rejected.exception).splitlines()[-1]
        for key in ("agent.inference_steps", "agent.num_action_steps", "agent.temporal_ensemble_coeff", "agent.noise_scale"):
            self.assertIn(f"[{key}=...]", usage)  # the usage line names every key the root config lets a user set
        with self.assertRaisesRegex(SystemExit, r"unknown keys: \['eval.num_episode'\]"):  # a typo of an eval key
            eval_vla.main([f"ckpt_path={self.ckpt}", "eval.num_episode=2"])

    def test_command_line_sets_keys_over_the_stored_config_and_writes_only_the_output_dir(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_script(
                [f"ckpt_path={self.ckpt}", "eval.num_episodes=1", "eval.max_timesteps=3", "eval.output_dir=out",
                 "agent.inference_steps=2", "eval.trajectory_image=false", "device=cpu"],
                Path(tmp),
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
            # No chdir (eval.output_dir stays relative to the caller) and no outputs/, .hydra/ or log file.
            self.assertEqual([p.name for p in Path(tmp).iterdir()], ["out"])
        self.assertEqual((summary["num_episodes"], [e["steps"] for e in summary["episodes"]]), (1, [3]))
        self.assertRegex(result.stdout, r"policy\s+IMF-2 \(IMFVLAAgent, 2 sampling step\(s\)\)")  # stored: 1


class EvalCommandLineTest(unittest.TestCase):
    """The Hydra command line and config merge, without a trained checkpoint."""

    def test_cfg_job_prints_the_composed_config_and_unknown_keys_fail(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_script(["--cfg", "job", "eval.num_episodes=3", "agent.inference_steps=1"], Path(tmp))
            self.assertEqual(result.returncode, 0, result.stderr)
            printed = yaml.safe_load(result.stdout)
            self.assertEqual((printed["ckpt_path"], printed["device"]), ("???", "auto"))
            self.assertEqual(
                printed["agent"],
                {"inference_steps": 1, "num_action_steps": None, "temporal_ensemble_coeff": None, "noise_scale": None},
            )
            self.assertEqual((printed["eval"]["num_episodes"], printed["eval"]["seed"]), (3, 1000))

            result = run_script(["ckpt_path=missing.pt", "train.lr=1"], Path(tmp))
            self.assertEqual(list(Path(tmp).iterdir()), [])
        self.assertNotEqual(result.returncode, 0)
        # Named by eval_vla.py before Hydra composes (Hydra's own error would suggest `+train.lr=1`).
        self.assertIn("unknown keys: ['train.lr']. eval_vla.py uses the checkpoint's stored config", result.stderr)
        self.assertNotIn("+train.lr", result.stderr)

    def test_missing_ckpt_path_names_the_key(self):
        with self.assertRaisesRegex(SystemExit, r"needs the checkpoint to evaluate: pass ckpt_path="):
            eval_vla.main(["eval.num_episodes=2"])

    def test_eval_settings_come_from_this_program_and_the_model_from_the_checkpoint(self):
        stored = {
            "data": {"task": "sim_insertion"},
            "agent": {"inference_steps": 10, "pred_horizon": 16},
            # A checkpoint does not choose where results go, how many processes run or what is uploaded.
            "eval": {"num_episodes": 7, "seed": 3, "use_ema": False, "output_dir": "/elsewhere", "num_workers": 64,
                     "swanlab": True},
        }
        argv = ["ckpt_path=x.pt", "eval.num_episodes=2", "agent.inference_steps=1"]
        config = eval_vla.checkpoint_config(eval_vla.compose_config(argv), stored, eval_vla.override_keys(argv))
        evaluation = config["eval"]
        self.assertEqual((evaluation["num_episodes"], evaluation["seed"], evaluation["use_ema"]), (2, 1000, True))
        self.assertEqual((evaluation["output_dir"], evaluation["num_workers"], evaluation["swanlab"]), (None, 1, False))
        self.assertEqual(config["agent"], {"inference_steps": 1, "pred_horizon": 16})
        # eval.task resolves against the checkpoint's own data config.
        self.assertEqual((evaluation["max_timesteps"], evaluation["task"]), (None, "sim_insertion"))
        self.assertEqual(set(config), {"data", "agent", "eval"})
        argv = ["ckpt_path=x.pt", "agent.inference_steps=null"]  # null: the checkpoint's, as --help says
        config = eval_vla.checkpoint_config(eval_vla.compose_config(argv), stored, eval_vla.override_keys(argv))
        self.assertEqual(config["agent"]["inference_steps"], 10)
        # How the policy acts may change at evaluation; a key the checkpoint lacks is added.
        argv = ["ckpt_path=x.pt", "agent.num_action_steps=4", "agent.temporal_ensemble_coeff=0.01", "agent.noise_scale=0"]
        config = eval_vla.checkpoint_config(eval_vla.compose_config(argv), stored, eval_vla.override_keys(argv))
        self.assertEqual(
            config["agent"],
            {"inference_steps": 10, "pred_horizon": 16, "num_action_steps": 4, "temporal_ensemble_coeff": 0.01,
             "noise_scale": 0},
        )


if __name__ == "__main__":
    unittest.main()
