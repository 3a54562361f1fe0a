"""One run per run dir: the lock, refusing to overwrite checkpoints, resume=auto's choice, temp files, retention,
settings checked before any work, and a head started from a RoboIMI checkpoint."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch

from roboimi.vla.training.checkpoint import load_checkpoint
from roboimi.vla.training.run_dir import RunDirLock, checkpoints_newest_first
from roboimi.vla.training.trainer import Trainer
from tests.tiny_config import TinyDatasetTestCase, compose_tiny, tiny_overrides
from tests.unwritable_dir import unwritable_dir

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "roboimi" / "demos" / "vla_scripts" / "train_vla.py"


def start_training(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    """train_vla.py in a child process, as a user starts it; stdout and stderr merged."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *overrides, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )


class RunDirTest(TinyDatasetTestCase):
    def run_dir(self, name: str) -> Path:
        return self.data_dir.parent / name

    def train(self, name: str, extra=()) -> Trainer:
        trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, list(extra)), self.run_dir(name))
        trainer.fit()
        return trainer

    def test_a_second_process_on_the_run_dir_is_refused_with_the_holders_pid(self):
        run_dir = self.run_dir("locked")
        holder = subprocess.Popen(
            [sys.executable, "-c", f"from roboimi.vla.training.run_dir import RunDirLock; RunDirLock({str(run_dir)!r}); print('held', flush=True); input()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            self.assertEqual(holder.stdout.readline().strip(), "held")
            with self.assertRaisesRegex(RuntimeError, rf"in use by another training process \(pid {holder.pid}\)\. Wait for it"):
                Trainer(compose_tiny("resnet_transformer", self.data_dir), run_dir)
        finally:
            holder.communicate("\n")
        Trainer(compose_tiny("resnet_transformer", self.data_dir), run_dir).close()  # free once the holder exits

    def test_a_fresh_run_never_replaces_checkpoints_silently(self):
        self.train("existing", ["train.max_steps=2"])
        with self.assertRaisesRegex(RuntimeError, r"already holds checkpoints \(newest: last\.pt\).*train\.resume=auto.*train\.overwrite=true"):
            Trainer(compose_tiny("resnet_transformer", self.data_dir), self.run_dir("existing"))
        trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.overwrite=true"]), self.run_dir("existing"))
        self.assertEqual(trainer.global_step, 0)
        trainer.close()

    def test_resume_auto_takes_the_newest_complete_checkpoint_and_removes_temp_files(self):
        ckpt_dir = self.run_dir("killed") / "checkpoints"
        self.train("killed", ["train.max_steps=4", "train.save_freq=2"])
        # A kill during the write of last.pt at step 4: last.pt is still step 2's, step_4.pt is complete and newer.
        os.replace(ckpt_dir / "step_2.pt", ckpt_dir / "last.pt")
        older = (ckpt_dir / "step_4.pt").stat().st_mtime_ns - 10**9
        os.utime(ckpt_dir / "last.pt", ns=(older, older))
        stale = ckpt_dir / ".last.pt.0123abcd.tmp"
        stale.write_bytes(b"partial")
        stale_export = self.run_dir("killed") / ".policy.pt.4567cdef.tmp"  # a kill during the policy.pt export
        stale_export.write_bytes(b"partial")
        self.assertEqual(checkpoints_newest_first(ckpt_dir)[0].name, "step_4.pt")
        trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.resume=auto", "train.max_steps=6"]), self.run_dir("killed"))
        self.assertEqual(trainer.global_step, 4)
        self.assertFalse(stale.exists())
        self.assertFalse(stale_export.exists())
        trainer.close()

    def test_resume_drops_the_log_lines_of_the_steps_it_trains_again(self):
        run_dir = self.run_dir("killed_between_checkpoints")
        self.train("killed_between_checkpoints", ["train.max_steps=4", "train.save_freq=2"])
        # kill -9 after step 4 was logged but before its checkpoint, in the middle of the next line of the log.
        ckpt_dir = run_dir / "checkpoints"
        (ckpt_dir / "step_4.pt").unlink()
        os.replace(ckpt_dir / "step_2.pt", ckpt_dir / "last.pt")
        log = run_dir / "logs.json.txt"
        with log.open("a") as f:
            f.write('{"step": 5, "ti')
        output = io.StringIO()
        with redirect_stdout(output):
            trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.resume=auto"]), run_dir)
        self.assertEqual(trainer.global_step, 2)
        self.assertIn(f"Dropped 3 line(s) of {log} logged after step 2, where this run continues", output.getvalue())
        self.assertEqual([json.loads(line)["step"] for line in log.read_text().splitlines()], [1, 2])
        trainer.fit()
        self.assertEqual([json.loads(line)["step"] for line in log.read_text().splitlines()], [1, 2, 3, 4])

    def test_a_finished_run_continued_does_nothing_and_touches_no_file(self):
        run_dir = self.run_dir("finished")
        self.train("finished", ["train.max_steps=2"])
        # The lock file is rewritten with its holder's pid by every process that takes it.
        files = sorted(path for path in run_dir.rglob("*") if path.name != ".run.lock")
        before = [(path, path.stat().st_mtime_ns) for path in files]
        output = io.StringIO()
        with redirect_stdout(output):
            self.train("finished", ["train.max_steps=2", "train.resume=auto"])
        self.assertIn(f"{run_dir}: already trained to step 2: nothing to do", output.getvalue())
        self.assertNotIn("Training done", output.getvalue())
        self.assertEqual([(path, path.stat().st_mtime_ns) for path in files], before)
        self.assertEqual(sorted(path for path in run_dir.rglob("*") if path.name != ".run.lock"), files)
        self.train("finished", ["train.max_steps=3", "train.resume=auto"])  # more steps asked for: the run continues
        self.assertEqual(load_checkpoint(run_dir / "policy.pt")["global_step"], 3)

    def test_keep_last_deletes_the_oldest_step_files(self):
        self.train("retention", ["train.max_steps=8", "train.save_freq=1", "train.keep_last=3"])
        names = sorted(p.name for p in (self.run_dir("retention") / "checkpoints").iterdir())
        self.assertEqual(names, ["last.pt", "step_6.pt", "step_7.pt", "step_8.pt"])
        self.assertEqual(load_checkpoint(self.run_dir("retention") / "checkpoints" / "last.pt")["global_step"], 8)

    def test_bad_settings_are_named_before_any_work(self):
        cases = {
            "train.save_freq=0": r"train\.save_freq=0 is invalid: an integer >= 1",
            "train.max_steps=0": r"train\.max_steps=0 is invalid: an integer >= 1",
            "train.lr=-1e-4": r"train\.lr=-0\.0001 is invalid: a finite learning rate > 0",
            "train.lr=inf": r"train\.lr=inf is invalid: a finite learning rate > 0",
            "+train.max_stepz=3": r"Unknown train\.\* key\(s\) \['train\.max_stepz'\]; valid keys: device, val_split",
            "train.keep_last=-1": r"train\.keep_last=-1 is invalid",
            "train.val_split=1.0": r"train\.val_split=1\.0 is invalid: a fraction in \[0, 1\)",
            "train.scheduler_type=linear": r"train\.scheduler_type='linear' is invalid: one of \['cosine', 'constant'\]",
        }
        for override, message in cases.items():
            with self.subTest(override=override):
                run_dir = self.run_dir("bad_" + override.split("=")[0])
                with self.assertRaisesRegex(ValueError, message):
                    Trainer(compose_tiny("resnet_transformer", self.data_dir, [override]), run_dir)
                self.assertFalse(run_dir.exists(), "work started before the settings were checked")

    def test_an_unknown_key_on_the_command_line_is_named_before_hydra_runs(self):
        run_dir = self.run_dir("typo")
        child = start_training(run_dir, ["train.max_stepz=3"])
        output, _ = child.communicate(timeout=120)
        self.assertEqual(child.returncode, 1, output)
        self.assertRegex(
            output.strip().splitlines()[-1],
            r"^Unknown train\.\* key\(s\) \['train\.max_stepz'\]; valid keys: device, val_split, .*max_steps, ",
        )
        self.assertNotIn("+train.max_stepz", output)  # Hydra's advice, which would add the typo as a new key
        self.assertFalse(run_dir.exists())

    def test_head_starts_from_a_roboimi_checkpoint(self):
        source = Trainer(compose_tiny("resnet_imf_attnres", self.data_dir, ["train.max_steps=2"]), self.run_dir("source"))
        source.fit()
        path = self.run_dir("source") / "checkpoints" / "last.pt"
        cfg = compose_tiny("resnet_imf_attnres", self.data_dir, [f"train.init_head_from={path}"])
        trainer = Trainer(cfg, self.run_dir("from_roboimi"))
        expected = source.ema.module.noise_pred_net.state_dict()  # the EMA head, where the checkpoint has one
        for key, value in trainer.agent.noise_pred_net.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
        trainer.close()

    def test_overwrite_leaves_nothing_of_the_earlier_run(self):
        self.train("replaced", ["train.max_steps=4", "train.save_freq=1"])
        self.train("replaced", ["train.max_steps=1", "train.save_freq=1", "train.overwrite=true"])
        run_dir = self.run_dir("replaced")
        self.assertEqual(sorted(p.name for p in (run_dir / "checkpoints").iterdir()), ["last.pt", "step_1.pt"])
        steps = [json.loads(line)["step"] for line in (run_dir / "logs.json.txt").read_text().splitlines()]
        self.assertEqual(steps, [1])

    def test_resume_auto_falls_back_past_unreadable_checkpoints_naming_them(self):
        self.train("corrupt", ["train.max_steps=4", "train.save_freq=2"])
        ckpt_dir = self.run_dir("corrupt") / "checkpoints"
        for name in ("last.pt", "step_4.pt"):  # e.g. a disk that filled up under both writes
            (ckpt_dir / name).write_bytes(b"\x00garbage")
        output = io.StringIO()
        with redirect_stdout(output):
            trainer = Trainer(
                compose_tiny("resnet_transformer", self.data_dir, ["train.resume=auto", "train.max_steps=6"]),
                self.run_dir("corrupt"),
            )
        self.assertEqual(trainer.global_step, 2)
        self.assertIn(f"skipping {ckpt_dir / 'last.pt'}", output.getvalue())
        self.assertIn(f"skipping {ckpt_dir / 'step_4.pt'}", output.getvalue())
        trainer.close()

    def test_resuming_from_a_policy_export_points_at_the_full_checkpoint(self):
        self.train("export", ["train.max_steps=2"])
        policy = self.run_dir("export") / "policy.pt"
        with self.assertRaisesRegex(ValueError, r"policy\.pt is an evaluation export.*checkpoints/last\.pt"):
            Trainer(compose_tiny("resnet_transformer", self.data_dir, [f"train.resume={policy}"]), self.run_dir("export"))

    def test_a_refused_second_run_writes_nothing_into_the_run_dir(self):
        run_dir = self.run_dir("busy")
        lock = RunDirLock(run_dir)
        try:
            child = start_training(run_dir, tiny_overrides("resnet_transformer", self.data_dir))
            output, _ = child.communicate(timeout=120)
        finally:
            lock.release()
        self.assertNotEqual(child.returncode, 0)
        self.assertIn("in use by another training process", output)
        self.assertEqual(sorted(p.name for p in run_dir.iterdir()), [".run.lock"])

    def test_sigterm_and_ctrl_c_stop_at_a_step_boundary_with_a_checkpoint(self):
        # Ctrl-C in a terminal signals the whole process group, loader workers included.
        for signum, workers in ((signal.SIGTERM, 0), (signal.SIGINT, 0), (signal.SIGINT, 2)):
            with self.subTest(signal=signum.name, workers=workers):
                run_dir = self.run_dir(f"stopped_{signum.name}_{workers}")
                extra = ["train.max_steps=100000", "train.save_freq=100000", "train.log_freq=1", f"train.num_workers={workers}"]
                child = start_training(run_dir, tiny_overrides("resnet_transformer", self.data_dir, extra))
                while not (run_dir / "logs.json.txt").is_file():  # training has started
                    self.assertIsNone(child.poll(), "training ended before it was signalled")
                    time.sleep(0.2)
                os.killpg(child.pid, signum)
                output, _ = child.communicate(timeout=120)
                self.assertEqual(child.returncode, 128 + signum, output)
                self.assertNotIn("Traceback", output)
                self.assertIn("train.resume=auto", output)
                step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["global_step"]
                self.assertGreater(step, 0)
                self.assertTrue((run_dir / "checkpoints" / f"step_{step}.pt").is_file())
                trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.resume=auto"]), run_dir)
                self.assertEqual(trainer.global_step, step)
                trainer.close()

    def test_lock_is_released_when_the_trainer_fails_to_build(self):
        run_dir = self.run_dir("failed_build")
        with self.assertRaises(ValueError):
            Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.batch_size=1000"]), run_dir)
        RunDirLock(run_dir).release()


class UnwritableRunDirTest(TinyDatasetTestCase):
    def test_a_file_or_a_read_only_dir_as_run_dir_is_named_with_the_fix(self):
        blocker = self.data_dir.parent / "a_file"
        blocker.write_text("")
        read_only = self.data_dir.parent / "read_only"
        read_only.mkdir()
        read_only.chmod(0o555)
        self.addCleanup(read_only.chmod, 0o755)
        cases = [blocker / "run"]
        if os.geteuid() != 0:  # root writes through permission bits
            cases.append(read_only / "run")
        for run_dir in cases:
            with self.subTest(run_dir=run_dir), self.assertRaisesRegex(OSError, rf"Cannot write into {run_dir}.*hydra\.run\.dir"):
                Trainer(compose_tiny("resnet_transformer", self.data_dir), run_dir)

    def test_a_run_dir_on_a_read_only_file_system_ends_the_command_with_the_setting_and_the_fix(self):
        run_dir = unwritable_dir(self) / "run"
        child = start_training(run_dir, tiny_overrides("resnet_transformer", self.data_dir))
        output, _ = child.communicate(timeout=120)
        self.assertEqual(child.returncode, 1, output)
        self.assertRegex(
            output.strip().splitlines()[-1],
            rf"^Cannot write into hydra\.run\.dir={run_dir} \(.+\)\. Pass a hydra\.run\.dir that is a writable",
        )
        self.assertNotIn("Traceback", output)
