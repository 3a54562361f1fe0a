"""Checkpoints are data: loading a crafted file runs no code, and only RoboIMI classes are instantiated from one."""
import os
import pickle
import re
import tempfile
import unittest
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from roboimi.demos.vla_scripts import eval_vla
from roboimi.vla import CONFIG_DIR
from roboimi.vla.training.checkpoint import build_agent_from_checkpoint, load_checkpoint, require_trusted_config


class RunsCode:
    """Unpickling calls os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CheckpointSafetyTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_a_pickle_that_calls_os_system_is_refused_and_nothing_runs(self):
        marker = self.root / "pwned"
        path = self.root / "evil.pt"
        torch.save({"agent": {}, "payload": RunsCode(marker)}, path)
        with self.assertRaises(RuntimeError) as ctx:
            load_checkpoint(path)
        self.assertIn(str(path), str(ctx.exception))
        self.assertIn("Refusing to load", str(ctx.exception))
        self.assertFalse(marker.exists(), "unpickling ran the embedded command")

    def test_a_foreign_target_in_the_config_is_not_instantiated(self):
        config = {"agent": {"_target_": "roboimi.vla.agent.VLAAgent", "head": {"_target_": "os.system", "command": "true"}}}
        with self.assertRaisesRegex(ValueError, r"config\.agent\.head\._target_='os\.system'.*not a model class"):
            build_agent_from_checkpoint({"config": config}, torch.device("cpu"))


def save_crafted(path: Path, agent_config: dict, **top_level) -> Path:
    """A checkpoint as torch.save writes it (loads with weights_only=True) whose stored config is crafted."""
    torch.save({"config": {"agent": agent_config, **top_level}, "agent": {}, "global_step": 0}, path)
    return path


class StoredConfigTest(unittest.TestCase):
    """A checkpoint's config is data: nothing it names is called unless it is one of RoboIMI's model classes."""

    AGENT = "roboimi.vla.agent_imf.IMFVLAAgent"

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        self.marker = self.root / "pwned"

    def tearDown(self):
        self.tmp.cleanup()

    def assert_refused(self, path: Path, key_pattern: str):
        for load in (lambda: load_checkpoint(path), lambda: eval_vla.main([f"ckpt_path={path}"])):
            with self.assertRaises(ValueError) as ctx:
                load()
            self.assertIn(str(path), str(ctx.exception))
            self.assertRegex(str(ctx.exception), key_pattern)
        self.assertFalse(self.marker.exists(), "the stored config ran the embedded command")

    def test_torch_load_of_embedded_pickle_bytes_is_refused(self):
        payload = pickle.dumps(RunsCode(self.marker))
        head = {
            "_target_": "roboimi.vla.training.checkpoint.torch.load",
            "f": {"_target_": "io.BytesIO", "_args_": [payload]},
            "weights_only": False,
        }
        path = save_crafted(self.root / "bytesio.pt", {"_target_": self.AGENT, "head": head})
        self.assert_refused(path, r"config\.agent\.head\._target_='roboimi\.vla\.training\.checkpoint\.torch\.load'")

    def test_a_function_reached_through_a_roboimi_module_is_refused(self):
        head = {"_target_": "roboimi.atomic_file.os.system", "command": f"touch {self.marker}"}
        path = save_crafted(self.root / "os_system.pt", {"_target_": self.AGENT, "head": head})
        self.assert_refused(path, r"config\.agent\.head\._target_='roboimi\.atomic_file\.os\.system'")

    def test_a_target_inside_a_list_is_refused(self):
        evil = [{"_target_": "os.system", "command": f"touch {self.marker}"}]
        path = save_crafted(self.root / "list.pt", {"_target_": self.AGENT, "camera_names": evil})
        self.assert_refused(path, r"config\.agent\.camera_names\[0\]\._target_='os\.system'")

    def test_hydra_call_keys_are_refused(self):
        for key, value in (("_args_", ["x"]), ("_call_", True), ("_partial_", "yes"), ("_convert_", "all")):
            path = save_crafted(self.root / f"{key}.pt", {"_target_": self.AGENT, key: value})
            self.assert_refused(path, rf"config\.agent\.{key}=")

    def test_a_roboimi_function_or_a_re_exported_class_is_refused(self):
        for target in ("roboimi.vla.training.checkpoint.load_checkpoint", "roboimi.vla.training.trainer.DataLoader"):
            path = save_crafted(self.root / "function.pt", {"_target_": target})
            self.assert_refused(path, re.escape(f"config.agent._target_={target!r}"))

    def test_interpolations_are_refused_not_resolved(self):
        os.environ["ROBOIMI_TEST_SECRET"] = "hunter2"
        self.addCleanup(os.environ.pop, "ROBOIMI_TEST_SECRET")
        path = save_crafted(
            self.root / "interp.pt", {"_target_": self.AGENT}, eval={"output_dir": "${oc.env:ROBOIMI_TEST_SECRET}"}
        )
        with self.assertRaises(ValueError) as ctx:
            load_checkpoint(path)
        self.assertIn("config.eval.output_dir='${oc.env:ROBOIMI_TEST_SECRET}'", str(ctx.exception))
        self.assertNotIn("hunter2", str(ctx.exception))

    def test_the_model_classes_of_the_shipped_configs_pass(self):
        for name in ("resnet_imf_attnres", "resnet_transformer", "state_imf_attnres", "image_transformer"):
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
                cfg = compose("config", overrides=[f"agent={name}", "agent.action_dim=14", "agent.obs_dim=14", "data.image_shape=[96,96]"])
            require_trusted_config(OmegaConf.to_container(cfg, resolve=True), "composed")

    def test_random_bytes_and_a_directory_are_named_for_what_they_are(self):
        path = self.root / "noise.pt"
        path.write_bytes(bytes(range(7, 256)) * 16)  # no zip archive, no pickle
        with self.assertRaisesRegex(RuntimeError, rf"Could not read checkpoint {re.escape(str(path))} .*corrupt"):
            load_checkpoint(path)
        with self.assertRaisesRegex(IsADirectoryError, rf"{re.escape(str(self.root))} is a directory.*policy\.pt"):
            load_checkpoint(self.root)

    def test_a_bare_state_dict_is_named_as_such(self):
        path = self.root / "weights.pt"
        torch.save({"layer.weight": torch.zeros(2)}, path)
        with self.assertRaisesRegex(ValueError, rf"{re.escape(str(path))} is not a RoboIMI checkpoint.*bare state_dict"):
            load_checkpoint(path)


if __name__ == "__main__":
    unittest.main()
