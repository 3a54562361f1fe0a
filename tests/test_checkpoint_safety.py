"""Checkpoints are data: loading a crafted file runs no code, and only RoboIMI classes are instantiated from one."""
import os
import tempfile
import unittest
from pathlib import Path

import torch

from roboimi.vla.checkpoint import build_agent_from_checkpoint, load_checkpoint, require_trusted_targets


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
        with self.assertRaisesRegex(ValueError, r"agent\.head\._target_='os\.system'.*refusing"):
            build_agent_from_checkpoint({"config": config}, torch.device("cpu"))
        require_trusted_targets({"_target_": "roboimi.vla.agent_imf.IMFVLAAgent", "head": {"_target_": "roboimi.x"}})


if __name__ == "__main__":
    unittest.main()
