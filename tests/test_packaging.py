"""Packaging: environment.yml mirrors setup.py's pins, and a built wheel ships the trainer, configs and console scripts."""
import ast
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def setup_requirements() -> set[str]:
    """install_requires plus every extra, read from setup.py's setup(...) call."""
    call = next(
        node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    extras = [req for reqs in keywords["extras_require"].values() for req in reqs]
    return set(keywords["install_requires"]) | set(extras)


class EnvironmentFileTest(unittest.TestCase):
    def test_conda_pip_section_equals_setup_requirements(self):
        environment = yaml.safe_load((ROOT / "environment.yml").read_text())
        pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
        self.assertEqual(set(pip_section) - {"-e ."}, setup_requirements())
        self.assertIn("python=3.11", environment["dependencies"])


class WheelTest(unittest.TestCase):
    """A non-editable install ships the trainer, the configs and the console scripts."""

    def test_wheel_holds_the_trainer_configs_and_entry_points(self):
        with tempfile.TemporaryDirectory() as tmp:
            # Built from a copy: setuptools writes build/ and egg-info next to setup.py.
            source = Path(tmp) / "source"
            shutil.copytree(ROOT / "roboimi", source / "roboimi", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(ROOT / "setup.py", source)
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp, str(source)],
                check=True, capture_output=True,
            )
            [wheel] = Path(tmp).glob("roboimi-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                names = set(archive.namelist())
                entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        for path in ("roboimi/vla/training/trainer.py", "roboimi/demos/vla_scripts/train_vla.py", "roboimi/demos/vla_scripts/eval_vla.py",
                     "roboimi/vla/conf/config.yaml", "roboimi/vla/conf/train/state.yaml", "roboimi/vla/conf/agent/state_imf_attnres.yaml"):
            self.assertIn(path, names)
        for script in ("roboimi-train = roboimi.demos.vla_scripts.train_vla:main",
                       "roboimi-eval = roboimi.demos.vla_scripts.eval_vla:cli",
                       "roboimi-record = roboimi.demos.record_sim_episodes:cli"):
            self.assertIn(script, entry_points)

    def test_console_script_targets_run(self):
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from roboimi.demos.vla_scripts.train_vla import main; sys.argv = ['roboimi-train', '--help']; main()"],
            capture_output=True, text=True, cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("train_vla is powered by Hydra", result.stdout)
