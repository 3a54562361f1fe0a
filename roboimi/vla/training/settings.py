"""A run's settings: checks of the train.* and eval.* keys, run before any data or checkpoint is read or any file is
written (each failure names the key, the value given and the allowed range), and the dotted view of a config."""
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from roboimi.vla import CONFIG_DIR
from roboimi.vla.fast_paths import PRECISIONS

SCHEDULER_TYPES = ("cosine", "constant")


def _require(ok: bool, key: str, value, allowed: str, group: str = "train") -> None:
    if not ok:
        raise ValueError(f"{group}.{key}={value!r} is invalid: {allowed}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The file of each group that defines all its keys (every preset of the group builds on it).
GROUP_DEFAULTS = {"train": CONFIG_DIR / "train" / "default.yaml", "eval": CONFIG_DIR / "eval" / "eval.yaml"}


def group_keys(group: str) -> list[str]:
    """The keys of the train or eval group, in the order of GROUP_DEFAULTS[group]."""
    return list(OmegaConf.load(GROUP_DEFAULTS[group]))


def unknown_keys_message(group: str, unknown: list[str]) -> str:
    named = [f"{group}.{key}" for key in unknown]
    return f"Unknown {group}.* key(s) {named}; valid keys: {', '.join(group_keys(group))}."


def require_known_keys(section: DictConfig, group: str) -> None:
    """Refuse keys that GROUP_DEFAULTS[group] does not define (a `+train.max_stepz=3` typo would be silently ignored)."""
    unknown = sorted(set(section) - set(group_keys(group)))
    if unknown:
        raise ValueError(unknown_keys_message(group, unknown))


def validate_train_settings(cfg: DictConfig) -> None:
    require_known_keys(cfg.train, "train")
    require_known_keys(cfg.eval, "eval")
    train = cfg.train
    for key, meaning in (
        ("max_steps", "the number of optimizer steps"),
        ("batch_size", "samples per step and process"),
        ("save_freq", "a checkpoint every N steps"),
        ("log_freq", "metrics every N steps"),
        ("rollout_num_episodes", "episodes per rollout validation"),
    ):
        _require(_is_int(train[key]) and train[key] >= 1, key, train[key], f"an integer >= 1 ({meaning})")
    for key, meaning in (
        ("warmup_steps", "linear LR warm-up steps"),
        ("num_workers", "DataLoader worker processes"),
        ("keep_last", "step_<N>.pt files kept; 0 keeps all"),
        ("rollout_val_freq_epochs", "rollouts every N epochs; 0 disables"),
    ):
        _require(_is_int(train[key]) and train[key] >= 0, key, train[key], f"an integer >= 0 ({meaning})")
    _require(isinstance(train.lr, (int, float)) and math.isfinite(train.lr) and train.lr > 0, "lr", train.lr, "a finite learning rate > 0")
    _require(0 <= train.min_lr <= train.lr, "min_lr", train.min_lr, f"within [0, train.lr={train.lr}]")
    _require(train.weight_decay >= 0, "weight_decay", train.weight_decay, "a value >= 0")
    _require(0 <= train.val_split < 1, "val_split", train.val_split, "a fraction in [0, 1)")
    _require(
        len(train.betas) == 2 and all(0 <= b < 1 for b in train.betas), "betas", list(train.betas), "two values in [0, 1)"
    )
    _require(train.scheduler_type in SCHEDULER_TYPES, "scheduler_type", train.scheduler_type, f"one of {list(SCHEDULER_TYPES)}")
    for key in ("channels_last", "use_ema", "compile"):
        _require(isinstance(train[key], bool), key, train[key], "true or false")
    _require(train.precision in PRECISIONS, "precision", train.precision, f"one of {list(PRECISIONS)}")
    resume = train.resume
    _require(resume is None or isinstance(resume, str), "resume", resume, "null, auto or a checkpoint path")


def validate_eval_settings(evaluation: DictConfig) -> None:
    """The values of the eval.* keys eval_vla.py acts on, before the checkpoint is read (its command line refuses
    unknown keys before composing)."""
    def require(ok, key, allowed):
        _require(ok, key, evaluation[key], allowed, group="eval")

    for key, meaning in (("num_episodes", "episodes to roll out"), ("num_workers", "rollout processes")):
        require(_is_int(evaluation[key]) and evaluation[key] >= 1, key, f"an integer >= 1 ({meaning})")
    require(_is_int(evaluation.seed), "seed", "an integer (episode i uses seed + i)")
    require(evaluation.max_timesteps is None or (_is_int(evaluation.max_timesteps) and evaluation.max_timesteps >= 1),
            "max_timesteps", "null (the task's episode length) or an integer >= 1")
    require(evaluation.video_episodes is None or (_is_int(evaluation.video_episodes) and evaluation.video_episodes >= 0),
            "video_episodes", "null (all) or an integer >= 0")
    for key in ("use_ema", "record_video", "trajectory_image", "swanlab"):
        require(isinstance(evaluation[key], bool), key, "true or false")
    require(evaluation.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}")
    output_dir = evaluation.output_dir
    require(output_dir is None or (isinstance(output_dir, str) and not Path(output_dir).is_file()), "output_dir",
            "null (<run>/eval) or a directory path, not an existing file")


def flatten_config(tree: dict, prefix: str = "") -> dict:
    """{'agent': {'head': {'n_emb': 64}}} -> {'agent.head.n_emb': 64}; lists stay values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
