"""One run per run dir: the lock, refusing to overwrite checkpoints, resume=auto's choice, temp files, retention,
settings checked before any work, and a head started from a RoboIMI checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from roboimi.vla.checkpoint import load_checkpoint
from roboimi.vla.run_dir import RunDirLock, newest_checkpoint
from roboimi.vla.trainer import Trainer
from tests.tiny_config import TinyDatasetTestCase, compose_tiny


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
            [sys.executable, "-c", f"from roboimi.vla.run_dir import RunDirLock; RunDirLock({str(run_dir)!r}); print('held', flush=True); input()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            self.assertEqual(holder.stdout.readline().strip(), "held")
            with self.assertRaisesRegex(RuntimeError, rf"in use by another training process \(pid {holder.pid}\)"):
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
        self.assertEqual(newest_checkpoint(ckpt_dir).name, "step_4.pt")
        trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.resume=auto", "train.max_steps=6"]), self.run_dir("killed"))
        self.assertEqual(trainer.global_step, 4)
        self.assertFalse(stale.exists())
        trainer.close()

    def test_keep_last_deletes_the_oldest_step_files(self):
        self.train("retention", ["train.max_steps=8", "train.save_freq=1", "train.keep_last=3"])
        names = sorted(p.name for p in (self.run_dir("retention") / "checkpoints").iterdir())
        self.assertEqual(names, ["last.pt", "step_6.pt", "step_7.pt", "step_8.pt"])
        self.assertEqual(load_checkpoint(self.run_dir("retention") / "checkpoints" / "last.pt")["global_step"], 8)

    def test_bad_settings_are_named_before_any_work(self):
        cases = {
            "train.save_freq=0": r"train\.save_freq=0 is invalid: an integer >= 1",
            "train.max_steps=0": r"train\.max_steps=0 is invalid: an integer >= 1",
            "train.lr=-1e-4": r"train\.lr=-0\.0001 is invalid: a learning rate > 0",
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

    def test_lock_is_released_when_the_trainer_fails_to_build(self):
        run_dir = self.run_dir("failed_build")
        with self.assertRaises(ValueError):
            Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.batch_size=1000"]), run_dir)
        RunDirLock(run_dir).release()
