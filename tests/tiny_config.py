"""Hydra composition of the real configs with tiny model and training sizes, for fast CPU tests."""
import tempfile
import unittest
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.synthetic_episodes import write_dataset

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "roboimi" / "vla" / "conf")

TINY_HEADS = {
    "resnet_transformer": ["agent.head.n_layer=1", "agent.head.n_emb=32", "agent.head.n_head=2"],
    "resnet_imf_attnres": ["agent.head.n_layer=1", "agent.head.n_emb=32", "agent.head.n_head=2", "agent.head.n_kv_head=2"],
}


def tiny_overrides(agent: str, dataset_dir, extra: list[str] = ()) -> list[str]:
    """Command-line overrides for a 1-layer, 32-wide head on the small conv trunk, batch 2, a few CPU steps, no workers,
    no SwanLab, no rollouts. The trunk keeps checkpoints at about 1 MB: with the agents' three ResNet-18s each
    checkpoint holds 0.5 GB and takes seconds to write. The ResNet trunk has its own tests (test_resnet_backbone)
    and a slow end-to-end run of the reference command (test_train_vla)."""
    return [
        f"agent={agent}",
        *TINY_HEADS[agent],
        "agent.pred_horizon=8",
        "agent.num_action_steps=4",
        "agent.vision_backbone.vision_backbone=small_cnn",
        "agent.vision_backbone.spatial_softmax_num_keypoints=8",
        f"data.dataset_dir={Path(dataset_dir)}",
        "train.device=cpu",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.val_split=0.0",
        "train.max_steps=4",
        "train.warmup_steps=2",
        "train.log_freq=1",
        "train.save_freq=2",
        "train.rollout_val_freq_epochs=0",
        "train.use_swanlab=false",
        *extra,
    ]


def compose_tiny(agent: str, dataset_dir, extra: list[str] = ()) -> DictConfig:
    """The config `tiny_overrides` composes."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("config", overrides=tiny_overrides(agent, dataset_dir, extra))


class TinyDatasetTestCase(unittest.TestCase):
    """Writes a synthetic dataset (episodes of EPISODE_LENGTHS frames, 32x32 images) once per test class."""

    EPISODE_LENGTHS = (12, 14)

    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.data_dir = Path(cls.tmp.name) / "data"
        write_dataset(cls.data_dir, lengths=cls.EPISODE_LENGTHS, image_size=(32, 32))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
