"""environment.yml lists the same pinned requirements as setup.py, so conda and pip users get one environment."""
import ast
import unittest
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
