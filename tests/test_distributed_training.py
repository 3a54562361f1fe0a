"""train_vla under DDP: 2 CPU processes (gloo) against a single process with the same global batch.

The objective here is the iMF compound-velocity loss through the real JVP path, with its random draws replaced by
functions of each sample, so a 2 x 1 split of a batch of 2 must reproduce the single-process losses.
"""
import json
import os
import socket
import tempfile
import time
import unittest
from pathlib import Path

import torch
import torch.multiprocessing as mp

from roboimi.vla.training.trainer import Trainer
from roboimi.vla.training.checkpoint import load_checkpoint
from roboimi.vla.training.distributed import AgentLoss, parameter_fingerprint
from tests.synthetic_episodes import write_dataset
from tests.test_train_vla_rollout_validation import rollout_steps
from tests.tiny_config import compose_tiny

OVERRIDES = [
    "agent.vision_backbone.use_group_norm=true",  # BatchNorm would couple samples of a batch
    "agent.head.p_drop_emb=0.0",
    "agent.head.p_drop_attn=0.0",
    "train.max_steps=3",
    "train.save_freq=3",
    "train.ddp_sync_check_steps=3",
]


def sample_determined_imf_loss(agent, batch) -> torch.Tensor:
    """iMF loss with e = sin(7x + 1) and fixed (t, r) = (0.7, 0.3) instead of random draws."""
    x = agent.normalize_action(batch["action"].float())
    cond = agent.encode_observation(batch["images"], batch["qpos"])
    e = torch.sin(7.0 * x + 1.0)
    t = torch.full((x.shape[0],), 0.7)
    r = torch.full((x.shape[0],), 0.3)
    z = 0.3 * x + 0.7 * e
    with torch.no_grad():
        v = agent.noise_pred_net(z, t, t, cond)
    u, du_dt = agent.noise_pred_net(z, r, t, cond), agent.time_derivative(z, r, t, v, cond)
    return ((agent._compound_velocity(u, du_dt, t, r) - (e - x)) ** 2).mean()


def set_rank_environment(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)


def run_rank(rank: int, world_size: int, port: int, data_dir: str, out_dir: str, synchronised: bool) -> None:
    set_rank_environment(rank, world_size, port)
    cfg = compose_tiny("resnet_imf_attnres", data_dir, [*OVERRIDES, "train.batch_size=1"])
    trainer = Trainer(cfg, Path(out_dir) / f"rank_{rank}")
    trainer.agent.compute_loss = lambda batch: sample_determined_imf_loss(trainer.agent, batch)
    if not synchronised:
        # The classic mistake: computing the loss on the bare module skips DDP's gradient all-reduce.
        trainer.loss_model = AgentLoss(trainer.agent)
    trainer.fit()
    fingerprint = parameter_fingerprint(trainer.trainable_params)
    (Path(out_dir) / f"fingerprint_{rank}.json").write_text(json.dumps(fingerprint))


def run_rank_with_rollouts(rank: int, world_size: int, port: int, data_dir: str, out_dir: str) -> None:
    """One epoch (2 x 6 frames at batch 1 per rank: 6 steps) and a rollout validation at its end."""
    set_rank_environment(rank, world_size, port)
    rollouts = ["data.task=sim_transfer", "eval.max_timesteps=3", "train.rollout_num_episodes=1", "train.rollout_val_freq_epochs=1"]
    cfg = compose_tiny("resnet_imf_attnres", data_dir, [*OVERRIDES, *rollouts, "train.batch_size=1", "train.max_steps=6", "train.save_freq=100"])
    Trainer(cfg, Path(out_dir) / f"rank_{rank}").fit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["train/loss"] for line in (run_dir / "logs.json.txt").read_text().splitlines()]


class DistributedTrainingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.data_dir = str(Path(cls.tmp.name) / "data")
        write_dataset(cls.data_dir, lengths=(6, 6), image_size=(32, 32))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def spawn(self, name: str, synchronised: bool) -> Path:
        out_dir = Path(self.tmp.name) / name
        mp.spawn(run_rank, args=(2, free_port(), self.data_dir, str(out_dir), synchronised), nprocs=2, join=True)
        return out_dir

    def test_two_processes_match_one_process_with_the_same_global_batch(self):
        out = self.spawn("ddp", synchronised=True)

        fingerprints = [json.loads((out / f"fingerprint_{r}.json").read_text()) for r in (0, 1)]
        self.assertEqual(fingerprints[0], fingerprints[1], "ranks ended with different parameters")
        self.assertEqual(sorted(p.name for p in (out / "rank_0" / "checkpoints").iterdir()), ["last.pt", "step_3.pt"])
        self.assertFalse((out / "rank_1" / "checkpoints").exists(), "rank 1 wrote a checkpoint")
        self.assertFalse((out / "rank_1" / "logs.json.txt").exists(), "rank 1 wrote logs")
        self.assertEqual(load_checkpoint(out / "rank_0" / "checkpoints" / "last.pt")["world_size"], 2)

        torch.set_num_threads(1)
        cfg = compose_tiny("resnet_imf_attnres", self.data_dir, [*OVERRIDES, "train.batch_size=2"])
        single = Trainer(cfg, Path(self.tmp.name) / "single")
        single.agent.compute_loss = lambda batch: sample_determined_imf_loss(single.agent, batch)
        single.fit()

        ddp_losses, single_losses = read_losses(out / "rank_0"), read_losses(Path(self.tmp.name) / "single")
        self.assertEqual(len(ddp_losses), 3)
        for step, (a, b) in enumerate(zip(ddp_losses, single_losses), start=1):
            self.assertAlmostEqual(a, b, delta=1e-5 * abs(b), msg=f"step {step}")

    def test_rollout_validation_under_ddp_saves_the_best_weights_on_every_rank_together(self):
        # Saving is collective: a rank-0-only save of best_rollout.pt would leave the ranks waiting on each other.
        out_dir = Path(self.tmp.name) / "rollouts"
        context = mp.start_processes(
            run_rank_with_rollouts, args=(2, free_port(), self.data_dir, str(out_dir)), nprocs=2, join=False
        )
        deadline = time.monotonic() + 240
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                self.fail("the two ranks did not finish within 240 s: a collective call that only one rank makes")
        run_dir = out_dir / "rank_0"
        self.assertEqual(rollout_steps(run_dir), [6])
        self.assertTrue((run_dir / "checkpoints" / "best_rollout.pt").is_file())
        self.assertFalse((out_dir / "rank_1" / "rollouts").exists(), "rank 1 ran rollouts")

    def test_the_sync_check_catches_unsynchronised_gradients(self):
        with self.assertRaises(mp.ProcessRaisedException) as caught:
            self.spawn("unsynchronised", synchronised=False)
        self.assertIn("DDP replicas diverged at step 0: gradient norm", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
