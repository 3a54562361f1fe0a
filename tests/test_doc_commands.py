"""The commands in README.md, docs/ and policies/README.md name experiments, config groups and keys that exist.

A doc command that composes no longer is the first thing a newcomer meets. Every `key=value` in a code span or
block is checked: a group choice (`agent=`, `experiment=`, ...) must be a file of its group, a dotted key
(`train.lr=`, `agent.head.n_emb=`) must exist in the config of some experiment, and each train_vla.py,
record_sim_episodes.py, eval_vla.py and eval_sweep.py command must pass that program's own checks. The dated notebook
(docs/notebook/) is left out: its commands are records of what ran at their commit.
"""
import re
import shlex
import unittest
from functools import lru_cache
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from roboimi.demos import record_sim_episodes
from roboimi.demos.vla_scripts import eval_sweep, eval_vla, train_vla
from roboimi.vla import CONFIG_DIR
from roboimi.vla.experiments import compose_experiment, experiment_names

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "policies" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GROUPS = {"agent", "data", "train", "eval", "backbone", "head", "experiment", "record"}
PLUGIN_CHOICES = {"hydra/launcher": {"basic", "joblib", "submitit_local", "submitit_slurm"}}
SCRIPTS = ("train_vla.py", "eval_vla.py", "record_sim_episodes.py", "eval_sweep.py")


def code_texts(text: str) -> list[str]:
    """The fenced blocks (continuation lines joined) and inline code spans of a markdown text."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line.split(" # ")[0] for line in lines] + inline


def assignments(command: str) -> list[str]:
    """The `key=value` tokens of a command, leaving out placeholders (<run>, $VAR), empty values (prose that names
    a key) and `+key=` additions."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        tokens = command.split()
    return [t for t in tokens if re.match(r"^[~]?[A-Za-z_][\w./@-]*=.", t) and not re.search(r"[<$]", t)]


def is_variable(token: str) -> bool:
    """An environment or make variable (OMP_NUM_THREADS=1, EXPERIMENT=...), not a setting of the program."""
    return token.split("=", 1)[0].isupper()


def first_of_sweep(token: str) -> str:
    """`train.seed=0,1,2` -> `train.seed=0` (a sweep composes like its first job)."""
    key, value = token.split("=", 1)
    return f"{key}={value.split(',')[0]}" if "," in value and not value.startswith("[") else token


@lru_cache(maxsize=None)
def known_keys() -> frozenset:
    """Every dotted key of the default config and of every experiment's config."""
    def flatten(tree, prefix=""):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        configs = [compose("config")]
    configs += [compose_experiment(name) for name in experiment_names()]
    keys = {key for cfg in configs for key in flatten(OmegaConf.to_container(cfg))}
    return frozenset(keys | {f"eval.{key}" for key in OmegaConf.load(CONFIG_DIR / "eval" / "eval.yaml")})


def check_program(command: str, tokens: list[str]) -> None:
    """Run the program's own validation of its command line (composition for the Hydra programs)."""
    tokens = [t for t in tokens if not is_variable(t)]
    if "train_vla.py" in command:
        train_vla.check_overrides(tokens)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            compose("config", overrides=[first_of_sweep(t) for t in tokens if not t.startswith("hydra")])
    elif "record_sim_episodes.py" in command:
        record_sim_episodes.compose_config(tokens)
    elif "eval_sweep.py" in command:
        eval_vla.override_keys([t for t in tokens if not t.startswith(eval_sweep.OWN_KEYS)])
    elif "eval_vla.py" in command:
        eval_vla.override_keys(tokens)


class DocCommandsTest(unittest.TestCase):
    def test_every_named_experiment_group_and_key_exists(self):
        checked = 0
        for doc in DOCS:
            for code in code_texts(doc.read_text()):
                tokens = assignments(code)
                for token in tokens:
                    key, value = token.lstrip("+~").split("=", 1)
                    with self.subTest(doc=str(doc.relative_to(ROOT)), token=token):
                        if key in PLUGIN_CHOICES:
                            self.assertIn(value, PLUGIN_CHOICES[key])
                        elif key.split("@")[0] in GROUPS and "." not in key:
                            for choice in value.split(","):
                                group = "experiment" if key == "EXPERIMENT" else key.split("@")[0]
                                self.assertTrue((CONFIG_DIR / group / f"{choice}.yaml").is_file(), f"no {group} {choice!r}")
                        elif key == "EXPERIMENT":  # make demo / make sweep
                            self.assertIn(value, experiment_names())
                        elif key.split(".")[0] in ("agent", "data", "train", "eval", "recipe"):
                            self.assertIn(key, known_keys())
                        checked += 1
                if any(script in code for script in SCRIPTS):
                    with self.subTest(doc=str(doc.relative_to(ROOT)), command=code):
                        try:
                            check_program(code, tokens)
                        except SystemExit as error:
                            self.fail(f"{code!r}: {error}")
        self.assertGreater(checked, 50)

    def test_the_check_catches_what_it_is_for(self):
        """A wrong name of each kind fails the checks above."""
        self.assertNotIn("train.max_stepz", known_keys())
        self.assertFalse((CONFIG_DIR / "experiment" / "top_transfer.yaml").is_file())
        with self.assertRaises(SystemExit):
            check_program("eval_vla.py", ["eval.bf16_autocast=true"])
        with self.assertRaises(SystemExit):
            check_program("train_vla.py", ["train.max_stepz=3"])
        with self.assertRaises(Exception):
            check_program("train_vla.py", ["experiment=nope"])
        self.assertEqual(assignments("python x.py ckpt_path=runs/<run>/policy.pt 'a=[1,2]' b=$B c=3 d= +e=1"), ["a=[1,2]", "c=3"])


if __name__ == "__main__":
    unittest.main()
