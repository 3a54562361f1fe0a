"""train_vla.py end to end on a tiny generated dataset: checkpoints, exact resume, failure handling."""
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir

from roboimi.demos.vla_scripts import train_vla
from roboimi.vla.training.trainer import Trainer
from roboimi.vla.training.checkpoint import load_checkpoint, save_checkpoint
from tests.tiny_config import CONFIG_DIR, TinyDatasetTestCase, compose_tiny


def read_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "logs.json.txt").read_text().splitlines()
    return {r["step"]: r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r}


class TrainVLATest(TinyDatasetTestCase):

    def run_dir(self, name: str) -> Path:
        return Path(self.tmp.name) / name

    def test_checkpoints_hold_everything_needed_to_resume_and_evaluate(self):
        for agent in ("resnet_transformer", "resnet_imf_attnres"):
            with self.subTest(agent=agent):
                run_dir = self.run_dir(f"e2e_{agent}")
                trainer = Trainer(compose_tiny(agent, self.data_dir), run_dir)
                initial = {k: v.clone() for k, v in trainer.agent.noise_pred_net.state_dict().items()}
                trainer.fit()

                names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
                self.assertEqual(names, ["last.pt", "step_2.pt", "step_4.pt"])
                ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
                self.assertEqual(ckpt["global_step"], 4)
                for key in ("agent", "ema", "optimizer", "lr_scheduler", "epoch", "config", "rng"):
                    self.assertIn(key, ckpt)
                self.assertEqual(ckpt["config"]["agent"]["obs_dim"], 14)
                self.assertEqual(ckpt["config"]["agent"]["action_dim"], 14)
                self.assertEqual(ckpt["config"]["data"]["image_shape"], [32, 32])
                self.assertTrue(torch.isfinite(ckpt["agent"]["action_min"]).all())  # the stats travel in the agent's buffers
                changed = [k for k, v in trainer.agent.noise_pred_net.state_dict().items() if not torch.equal(v, initial[k])]
                self.assertGreater(len(changed), 0, "no head parameter changed after 4 optimizer steps")
                self.assertEqual(sorted(read_losses(run_dir)), [1, 2, 3, 4])

    def test_resume_reproduces_the_uninterrupted_loss_sequence(self):
        for agent in ("resnet_transformer", "resnet_imf_attnres"):
            with self.subTest(agent=agent):
                full_dir = self.run_dir(f"full_{agent}")
                extra = ["train.max_steps=6", "train.save_freq=3"]
                Trainer(compose_tiny(agent, self.data_dir, extra), full_dir).fit()
                full = read_losses(full_dir)

                resumed_dir = self.run_dir(f"resumed_{agent}")
                resume = [*extra, f"train.resume={full_dir / 'checkpoints' / 'step_3.pt'}"]
                trainer = Trainer(compose_tiny(agent, self.data_dir, resume), resumed_dir)
                self.assertEqual(trainer.global_step, 3)
                trainer.fit()
                resumed = read_losses(resumed_dir)

                self.assertEqual(sorted(resumed), [4, 5, 6])
                for step in (4, 5, 6):
                    self.assertEqual(resumed[step], full[step], f"loss differs at step {step}")

    def test_start_banner_says_where_on_what_and_how_big(self):
        trainer = Trainer(compose_tiny("resnet_imf_attnres", self.data_dir), self.run_dir("banner"))
        try:
            banner = trainer.describe()
        finally:
            trainer.close()
        head_params = sum(p.numel() for p in trainer.agent.noise_pred_net.parameters()) / 1e6
        for part in (
            f"Training IMFVLAAgent (no experiment, training seed 42) in {self.run_dir('banner')} (pid {os.getpid()}, cpu",
            "1 torch thread(s)",
            "from scratch to step 4",
            f"2 training episodes, {len(trainer.bundle.train)} samples",
            f"head {head_params:.2f} M",
            "batch 2",
            "no SwanLab",
        ):
            self.assertIn(part, banner)

    def test_resume_auto_starts_fresh_without_a_checkpoint(self):
        trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.resume=auto"]), self.run_dir("auto"))
        self.assertEqual(trainer.global_step, 0)

    def test_a_checkpoint_from_before_derivative_precision_and_noise_scale_resumes(self):
        run_dir = self.run_dir("before_derivative_precision")
        Trainer(compose_tiny("resnet_imf_attnres", self.data_dir, ["train.max_steps=2"]), run_dir).fit()
        old = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        del old["config"]["agent"]["derivative_precision"], old["config"]["agent"]["noise_scale"]
        save_checkpoint(run_dir / "checkpoints" / "last.pt", old)
        resumed = Trainer(compose_tiny("resnet_imf_attnres", self.data_dir, ["train.max_steps=3", "train.resume=auto"]), run_dir)
        self.addCleanup(resumed.close)
        agent = resumed.agent
        self.assertEqual((resumed.global_step, agent.derivative_precision, agent.noise_scale), (2, "fp32", 1.0))

    def test_resume_with_a_different_model_config_names_the_keys(self):
        run_dir = self.run_dir("mismatch")
        Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.max_steps=2"]), run_dir).fit()
        changed = ["agent.head.n_emb=64", f"train.resume={run_dir / 'checkpoints' / 'last.pt'}"]
        with self.assertRaisesRegex(ValueError, r"agent\.head\.n_emb: 32 -> 64"):
            Trainer(compose_tiny("resnet_transformer", self.data_dir, changed), self.run_dir("mismatch_2"))

    def test_non_finite_loss_stops_with_a_diagnostic_checkpoint(self):
        run_dir = self.run_dir("nan")
        trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir), run_dir)
        weight = torch.ones((), requires_grad=True)
        trainer.agent.compute_loss = lambda batch: weight * float("nan")  # from the first step on
        with self.assertRaisesRegex(FloatingPointError, r"Non-finite training loss .* step 0.*train\.lr"):
            trainer.fit()
        self.assertTrue((run_dir / "checkpoints" / "nonfinite_step_0.pt").is_file())
        self.assertFalse((run_dir / "checkpoints" / "last.pt").exists())

    def test_swanlab_failure_warns_and_training_continues(self):
        run_dir = self.run_dir("swanlab_broken")
        cfg = compose_tiny("resnet_transformer", self.data_dir, ["train.use_swanlab=true", "train.swanlab_mode=offline"])
        trainer = Trainer(cfg, run_dir)

        def broken_log(*args, **kwargs):
            raise ConnectionError("logging backend down")

        # Patched on the swanlab module itself, so restored afterwards for the other tests.
        with mock.patch.object(trainer.logger._swanlab, "log", broken_log), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit()
        self.assertEqual(trainer.global_step, 4)
        self.assertTrue(any("logging backend down" in str(w.message) for w in caught))
        self.assertEqual(sorted(read_losses(run_dir)), [1, 2, 3, 4])

    def test_head_starts_from_an_external_imf_checkpoint(self):
        cfg = compose_tiny("resnet_imf_attnres", self.data_dir)
        external = {k: v + 0.5 for k, v in Trainer(cfg, self.run_dir("source")).agent.noise_pred_net.state_dict().items()}
        path = self.run_dir("external") / "imf_head.ckpt"
        path.parent.mkdir(parents=True)
        # The diffusion_policy layout: the head's keys behind the policy's attribute name, inside state_dicts/model.
        torch.save({"state_dicts": {"model": {f"model.{k}": v for k, v in external.items()}}}, path)
        cfg = compose_tiny("resnet_imf_attnres", self.data_dir, [f"train.init_head_from={path}"])
        loaded = Trainer(cfg, self.run_dir("init")).agent.noise_pred_net.state_dict()
        self.assertEqual(list(loaded), list(external))
        for key, value in external.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)

        cfg = compose_tiny("resnet_transformer", self.data_dir, [f"train.init_head_from={path}"])
        with self.assertRaisesRegex(ValueError, "missing"):
            Trainer(cfg, self.run_dir("wrong_head"))

    @pytest.mark.slow
    def test_reference_imf_command_starts_training(self):
        """The reference IMF-AttnRes run's overrides, with CPU sizes for device, steps, batch, workers and SwanLab.

        Slow (about a minute, most of the default suite's margin): one step of the 32 M-parameter head and three
        ResNet-18s and its 0.5 GB checkpoint. The head's parameter count is also checked fast, in
        test_imf_transformer1d."""
        reference = (
            "agent=resnet_imf_attnres data.camera_names=[r_vis,top,front] train.val_split=0.0 train.seed=42 "
            "train.batch_size=80 train.lr=5e-4 train.max_steps=150000 train.log_freq=100 train.save_freq=10000 "
            "train.rollout_val_freq_epochs=5 train.rollout_validate_on_checkpoint=false train.rollout_num_episodes=5 "
            "train.warmup_steps=2000 train.scheduler_type=cosine train.min_lr=1e-6 train.weight_decay=1e-5 "
            "train.grad_clip=1.0 agent.pred_horizon=16 agent.inference_steps=1 agent.head.n_emb=384 "
            "agent.head.n_layer=18 agent.head.n_head=1 agent.head.n_kv_head=1 "
            "agent.vision_backbone.pretrained_backbone_weights=null agent.vision_backbone.freeze_backbone=false "
            "agent.vision_backbone.use_separate_rgb_encoder_per_camera=true"
        ).split()
        cpu = ["train.device=cpu", "train.max_steps=1", "train.batch_size=2", "train.num_workers=0", "train.use_swanlab=false"]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = compose("config", overrides=[*reference, f"data.dataset_dir={self.data_dir}", *cpu])
        run_dir = self.run_dir("reference_imf")
        trainer = Trainer(cfg, run_dir)
        trainer.fit()
        head = trainer.agent.noise_pred_net
        self.assertEqual(type(head).__name__, "IMFTransformer1D")
        # cond = 3 cameras x 64 keypoint features + 14 state dims = 206; 14-dim actions (the parameter-count formula).
        self.assertEqual(sum(p.numel() for p in head.parameters()), 32_117_006)
        self.assertEqual(trainer.global_step, 1)
        self.assertTrue((run_dir / "checkpoints" / "step_1.pt").is_file())

    def test_batch_larger_than_the_dataset_is_a_clear_error(self):
        cfg = compose_tiny("resnet_transformer", self.data_dir, ["train.batch_size=1000"])
        with self.assertRaisesRegex(ValueError, r"train\.batch_size=1000 is larger than the 26 training samples"):
            Trainer(cfg, self.run_dir("big_batch"))

    def test_cuda_request_without_cuda_is_a_clear_error(self):
        if torch.cuda.is_available():
            self.skipTest("CUDA is available here")
        cfg = compose_tiny("resnet_transformer", self.data_dir, ["train.device=cuda"])
        with self.assertRaisesRegex(RuntimeError, r"CUDA is not available.*train\.device=cpu"):
            Trainer(cfg, self.run_dir("cuda"))


class ValidationSplitTest(TinyDatasetTestCase):
    EPISODE_LENGTHS = (12, 12, 12, 12)  # train.val_split=0.25: 36 training samples, 12 validation samples

    def test_a_batch_larger_than_the_validation_split_validates_on_all_its_samples(self):
        run_dir = Path(self.tmp.name) / "small_val"
        extra = ["train.val_split=0.25", "train.batch_size=20", "train.max_steps=2"]
        trainer = Trainer(compose_tiny("resnet_transformer", self.data_dir, extra), run_dir)
        self.assertEqual((len(trainer.bundle.train), len(trainer.bundle.val)), (36, 12))
        self.assertEqual([len(batch) for batch in trainer.val_loader.batch_sampler], [12])
        trainer.fit()
        records = [json.loads(line) for line in (run_dir / "logs.json.txt").read_text().splitlines()]
        self.assertEqual([r["step"] for r in records if "val/loss" in r], [1])  # epoch 0 is one batch of 20

    def test_a_batch_larger_than_the_training_split_names_it(self):
        cfg = compose_tiny("resnet_transformer", self.data_dir, ["train.val_split=0.25", "train.batch_size=40"])
        with self.assertRaisesRegex(ValueError, r"train\.batch_size=40 is larger than the 36 training samples per"):
            Trainer(cfg, Path(self.tmp.name) / "big_batch")


class CommandLineTest(unittest.TestCase):
    """train_vla.py checks its command line before Hydra composes (test_run_dir runs it as a process)."""

    def test_keys_of_the_groups_the_command_line_selects_are_checked(self):
        cases = {
            ("eval.num_episode=3",): r"Unknown eval\.\* key\(s\) \['eval\.num_episode'\]; valid keys: task, num_",
            ("agent.head.n_embd=64",): r"Unknown key\(s\) \['agent\.head\.n_embd'\] in the config this command line "
                                       r"composes; for agent\.head\.n_embd, the closest keys are agent\.head\.n_emb,",
            # n_kv_head is a key of the IMF head only; each agent of a sweep (-m) is checked.
            ("agent=resnet_transformer", "agent.head.n_kv_head=2"): r"composes \(agent=resnet_transformer\)",
            ("agent=resnet_imf_attnres,resnet_transformer", "agent.head.n_kv_head=2"): r"\(agent=resnet_transformer\)",
            ("data.datset_dir=x",): r"the closest keys are data\.dataset_dir\.",
            ("agent.head.xyz=2",): r"the keys under agent\.head are agent\.head\.n_layer, agent\.head\.n_head, ",
        }
        for overrides, message in cases.items():
            with self.subTest(overrides=overrides), self.assertRaisesRegex(SystemExit, message):
                train_vla.check_overrides(overrides)
        valid = [
            "experiment=top_transfer_imf", "agent.head.n_kv_head=2", "agent=resnet_imf_attnres,resnet_imf_attnres",
            "data.camera_names.0=top", "train.seed=0,1", "+train.extra=1", "++agent.extra=1", "~train.lr",
            "hydra.run.dir=x", "hydra/launcher=joblib", "eval.num_episodes=3",
        ]
        self.assertIsNone(train_vla.check_overrides(valid))


class AtomicCheckpointTest(unittest.TestCase):
    def test_a_failed_write_leaves_the_previous_file_intact_and_no_temp_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "last.pt"
            save_checkpoint(path, {"global_step": 1, "config": {}})
            with self.assertRaises(Exception):
                save_checkpoint(path, {"global_step": 2, "config": {}, "unpicklable": lambda: None})
            self.assertEqual(load_checkpoint(path)["global_step"], 1)
            self.assertEqual(sorted(p.name for p in Path(tmp).iterdir()), ["last.pt"])

    def test_a_refused_write_names_the_file_the_cause_and_the_size_and_keeps_the_previous_file(self):
        script = (
            "import resource, signal, sys, torch\n"
            "from roboimi.vla.training.checkpoint import save_checkpoint\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail instead of killing\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
            "save_checkpoint(sys.argv[1], {'config': {}, 'global_step': 2, 'w': torch.zeros(1_000_000)})\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "last.pt"
            save_checkpoint(path, {"global_step": 1, "config": {}})
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
            result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env, timeout=120)
            self.assertNotEqual(result.returncode, 0)
            last_line = result.stderr.strip().splitlines()[-1]
            self.assertRegex(last_line, rf"OSError: .*Could not write checkpoint {re.escape(str(path))}: .*refused the write")
            self.assertIn("needs about 3.8 MiB", last_line)
            self.assertEqual(load_checkpoint(path)["global_step"], 1)
            self.assertEqual(sorted(p.name for p in Path(tmp).iterdir()), ["last.pt"])

    def test_missing_checkpoint_names_the_path(self):
        with self.assertRaisesRegex(FileNotFoundError, r"nowhere\.pt does not exist"):
            load_checkpoint("nowhere.pt")


if __name__ == "__main__":
    unittest.main()
