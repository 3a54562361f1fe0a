"""SwanLab scalars and media flow from train_vla, offline (no account, no network) and disabled."""
import json
import unittest
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from roboimi.vla.training.trainer import Trainer
from roboimi.vla.training.experiment_logger import ExperimentLogger
from tests.tiny_config import TinyDatasetTestCase, compose_tiny


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


class SwanLabLoggingTest(TinyDatasetTestCase):

    def test_offline_mode_writes_a_run_with_the_training_scalars(self):
        run_dir = Path(self.tmp.name) / "offline"
        cfg = compose_tiny("resnet_transformer", self.data_dir, ["train.use_swanlab=true", "train.swanlab_mode=offline"])
        Trainer(cfg, run_dir).fit()

        run_files = files_under(run_dir / "swanlog")
        self.assertTrue(any(p.suffix == ".swanlab" for p in run_files), run_files)
        [config_file] = [p for p in run_files if p.name == "config.yaml"]
        # One dotted key per setting, so the experiments table compares runs by column.
        config = yaml.safe_load(config_file.read_text())
        self.assertEqual(config["agent.head.n_emb"]["value"], 32)
        self.assertEqual(config["train.lr"]["value"], cfg.train.lr)
        self.assertNotIn("agent", config)
        records = [json.loads(line) for line in (run_dir / "logs.json.txt").read_text().splitlines()]
        self.assertEqual([r["step"] for r in records], [1, 2, 3, 4])
        for key in ("train/loss", "train/lr", "train/grad_norm", "train/it_per_s"):
            self.assertTrue(all(np.isfinite(r[key]) for r in records), key)
        self.assertEqual(records[0]["train/lr"], 0.5 * cfg.train.lr)

    def test_disabled_mode_writes_no_swanlab_files_but_keeps_the_json_log(self):
        run_dir = Path(self.tmp.name) / "disabled"
        cfg = compose_tiny("resnet_transformer", self.data_dir, ["train.use_swanlab=true", "train.swanlab_mode=disabled"])
        Trainer(cfg, run_dir).fit()
        self.assertEqual(files_under(run_dir / "swanlog"), [])
        self.assertEqual(len((run_dir / "logs.json.txt").read_text().splitlines()), 4)

    def test_rollout_media_are_stored_as_images_and_gif(self):
        run_dir = Path(self.tmp.name) / "media"
        frames = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(3)]
        png, gif = run_dir / "trajectory_0.png", run_dir / "episode_0.gif"
        run_dir.mkdir(parents=True)
        frames[0].save(png)
        frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)

        logger = ExperimentLogger(run_dir, use_swanlab=True, project="roboimi-test", mode="offline", experiment_name="media", config={})
        logger.log_images("rollout/trajectory", [png], step=1)
        logger.log_gif("rollout/video", gif, step=1)
        logger.finish()
        media = [p.suffix for p in files_under(run_dir / "swanlog") if "media" in p.parts]
        self.assertIn(".png", media)
        self.assertIn(".gif", media)

    def test_unknown_mode_is_rejected_with_the_allowed_values(self):
        with self.assertRaisesRegex(ValueError, "disabled, offline, local, cloud"):
            ExperimentLogger(self.tmp.name, use_swanlab=True, project="p", mode="online", experiment_name="x", config={})


if __name__ == "__main__":
    unittest.main()
