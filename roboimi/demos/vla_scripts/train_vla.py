"""Train a VLA agent (DDPM/DDIM transformer baseline or IMF-AttnRes) on a directory of HDF5 episodes.

    python roboimi/demos/vla_scripts/train_vla.py agent=resnet_imf_attnres data.dataset_dir=data/sim_transfer

The workspace is roboimi.vla.training.trainer.Trainer; outputs go to the Hydra run dir (checkpoints/, logs.json.txt,
swanlog/, rollouts/). The command line is checked before Hydra composes: a `train.*`, `eval.*`, `agent.*` or `data.*`
key the config does not have is named with the valid ones.
"""
import difflib
import itertools
from pathlib import Path
from typing import Sequence

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from roboimi.vla import CONFIG_DIR
from roboimi.vla.training.settings import GROUP_DEFAULTS, flatten_config, group_keys, unknown_keys_message
from roboimi.vla.training.trainer import Trainer

COMPOSED_GROUPS = ("agent", "data")  # whose keys depend on the files the command line selects


def check_overrides(overrides: Sequence[str]) -> None:
    """SystemExit naming the key and the valid ones when an override sets a `train.*`, `eval.*`, `agent.*` or `data.*`
    key the config does not have.

    Runs before Hydra composes, whose own error for such a typo (`train.max_stepz=3`) advises `+train.max_stepz=3`.
    `+key=` additions, group choices (`agent=...`, `experiment=...`) and Hydra's own settings are left to Hydra.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return  # Hydra names the malformed override itself, with its position on the command line
    settings = [
        o.key_or_group for o in parsed
        if "." in o.key_or_group and not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override())
    ]
    for group in GROUP_DEFAULTS:
        unknown = [key.split(".", 1)[1] for key in settings if key.split(".")[0] == group]
        unknown = [key for key in unknown if key.split(".")[0] not in group_keys(group)]
        if unknown:
            raise SystemExit(unknown_keys_message(group, unknown))
    composed_keys = [key for key in settings if key.split(".")[0] in COMPOSED_GROUPS]
    if not composed_keys:
        return
    choices = [o for o in parsed if "." not in o.key_or_group and not o.is_hydra_override()]
    for selection, config in selected_configs(choices).items():
        unknown = [key for key in composed_keys if not has_key(config, key)]
        if unknown:
            selected = f" ({selection})" if selection else ""
            hints = "; ".join(f"for {key}, {valid_keys_hint(config, key)}" for key in unknown)
            raise SystemExit(f"Unknown key(s) {unknown} in the config this command line composes{selected}; {hints}.")


def selected_configs(choices) -> dict[str, dict]:
    """The configs the command line's group choices compose, by the choices (a sweep's `agent=a,b` composes one
    config per agent); none when they do not compose, which Hydra then reports itself."""
    try:
        options = [
            [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override()
            else [o.input_line]
            for o in choices
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return {
                " ".join(selection): OmegaConf.to_container(compose("config", overrides=list(selection)))
                for selection in itertools.product(*options)
            }
    except (HydraException, OmegaConfBaseException):
        return {}


def has_key(config: dict, dotted_key: str) -> bool:
    node = config
    for part in dotted_key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def valid_keys_hint(config: dict, dotted_key: str) -> str:
    """The settings of `config` most like `dotted_key`, or, when none is alike, all those under its longest existing
    prefix (`agent.head.*` for `agent.head.x`)."""
    group = dotted_key.split(".")[0]
    # Hydra's own keys (_target_, _partial_) say what to build, not how: no one sets them on the command line.
    keys = [key for key in flatten_config(config[group], f"{group}.") if not key.rsplit(".", 1)[-1].startswith("_")]
    close = difflib.get_close_matches(dotted_key, keys, n=5, cutoff=0.8)
    if close:
        return f"the closest keys are {', '.join(close)}"
    prefix = dotted_key.rsplit(".", 1)[0]
    while not has_key(config, prefix):
        prefix = prefix.rsplit(".", 1)[0]
    return f"the keys under {prefix} are {', '.join(key for key in keys if key.startswith(f'{prefix}.'))}"


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    Trainer(cfg, Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task)).fit()


def main() -> None:
    """Console-script entry point (roboimi-train): Hydra's command line, with unknown keys named first."""
    # The parser hydra.main itself uses, so flag values (`--cfg job`) are not taken for overrides.
    check_overrides(get_args_parser().parse_args().overrides)
    hydra_main()


if __name__ == "__main__":
    main()
