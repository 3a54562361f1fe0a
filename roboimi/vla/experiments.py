"""The `experiment` config group (conf/experiment/<name>.yaml): the measured recipes, one flag each.

An experiment composes the agent, data and train groups and states what it trains on (`recipe`: demos, image size;
`data`: task, cameras, dataset dir), so the same name gives train_vla.py its run and record_sim_episodes.py the
matching demonstrations.
"""
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from roboimi.vla import CONFIG_DIR

EXPERIMENT_DIR = CONFIG_DIR / "experiment"


def experiment_names() -> list[str]:
    return sorted(path.stem for path in EXPERIMENT_DIR.glob("*.yaml"))


def compose_experiment(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """train_vla.py's config for `experiment=<name> *overrides`; Hydra's global state is left as found."""
    if name not in experiment_names():
        raise ValueError(f"Unknown experiment {name!r}; the experiments are: {', '.join(experiment_names())}.")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=[f"experiment={name}", *overrides])


def recording_settings(name: str) -> dict:
    """record_sim_episodes.py settings that record experiment `name`'s demonstrations where it trains on them."""
    cfg = compose_experiment(name)
    return {
        "task": cfg.data.task,
        "num_episodes": cfg.recipe.demos,
        "dataset_dir": cfg.data.dataset_dir,
        "camera_names": list(cfg.data.camera_names),
        "image_size": list(cfg.recipe.image_size or (96, 96)),  # unused without cameras; the recorder needs a size
    }
