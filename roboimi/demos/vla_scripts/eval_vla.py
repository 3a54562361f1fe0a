"""Evaluate a trained checkpoint with headless rollouts in its built-in task.

    python roboimi/demos/vla_scripts/eval_vla.py ckpt_path=runs/<run>/checkpoints/last.pt eval.num_episodes=50 eval.output_dir=eval_out

A Hydra program like train_vla.py over the root config roboimi/vla/conf/eval_vla.yaml: `--help` lists the keys,
`--cfg job` prints what a command line composes, and nothing but the evaluation's own output is written (no outputs/
dir). The agent is rebuilt from the checkpoint alone (config, weights, normalization stats). The evaluation settings
(`eval.*`, `device`) come from this program's config and command line, never from the checkpoint; how the policy acts
(`agent.inference_steps`, `agent.num_action_steps`, `agent.temporal_ensemble_coeff`) is stored and can be set here.
Rollouts act with the EMA weights when the checkpoint has them; `eval.use_ema=false` evaluates the trained weights.
Writes <output_dir>/summary.json (success_rate, mean_return, num_episodes, mean_inference_ms, weights, per-episode
entries). Ctrl-C or SIGTERM ends the rollouts at once, writes the summary of the episodes finished by then (marked
"partial") and exits with 128 + the signal number.
"""
import json
import signal
import sys
from pathlib import Path
from typing import Sequence

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from roboimi.vla import CONFIG_DIR
from roboimi.vla.training.checkpoint import (
    build_agent_from_checkpoint, describe_selection, load_checkpoint, scored_selection_seeds, weight_selection,
)
from roboimi.evaluation.agent_policy import evaluate_agent, policy_name
from roboimi.evaluation.rollout import NoEpisodeFinished
from roboimi.vla.training.experiment_logger import ExperimentLogger
from roboimi.vla.training.graceful_stop import GracefulStop
from roboimi.vla.fast_paths import apply_eval_fast_paths
from roboimi.vla.training.run_dir import RunDirLock
from roboimi.vla.training.runtime import resolve_device
from roboimi.vla.training.settings import GROUP_DEFAULTS, validate_eval_settings
from roboimi.evaluation.success_stats import format_rate

CONFIG_NAME = "eval_vla"
# How the trained policy acts (sampling steps, executed window, temporal ensembling, initial noise): settable,
# null = stored.
AGENT_KEYS = tuple(f"agent.{key}" for key in OmegaConf.load(CONFIG_DIR / f"{CONFIG_NAME}.yaml").agent)
USAGE = (
    "usage: eval_vla.py ckpt_path=<file.pt> [eval.num_episodes=N] [eval.output_dir=DIR] [eval.<key>=...] "
    + "".join(f"[{key}=...] " for key in AGENT_KEYS)
    + "[device=auto|cpu|cuda] (eval_vla.py --help lists the eval keys)"
)


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The keys `overrides` set; SystemExit naming the settable keys when one is anything else.

    Also run before Hydra composes, whose own error for an unknown key names no settable key and suggests `+key=`,
    which the stored config would then ignore.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise SystemExit(f"{error}\n{USAGE}") from None
    eval_keys = list(OmegaConf.load(GROUP_DEFAULTS["eval"]))
    settable = ["ckpt_path", "device", *AGENT_KEYS, *(f"eval.{key}" for key in eval_keys)]
    keys = [o.key_or_group for o in parsed if not o.key_or_group.startswith(("hydra.", "hydra/"))]
    unknown = [key for key in keys if key not in settable]
    if unknown:
        raise SystemExit(
            f"unknown keys: {unknown}. eval_vla.py uses the checkpoint's stored config as trained and sets only "
            f"ckpt_path, device, {', '.join(AGENT_KEYS)} and eval.<key> for <key> in: {', '.join(eval_keys)}.\n{USAGE}"
        )
    return keys


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config the command line `eval_vla.py *overrides` composes; Hydra's global state is left as found."""
    override_keys(overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(CONFIG_NAME, overrides=list(overrides))


def checkpoint_config(cfg: DictConfig, stored: dict, overridden: Sequence[str]) -> dict:
    """The config to evaluate with: the checkpoint's stored model, data spec and normalization; `eval.*` from this
    program's own config and command line only (a stored `eval` section is ignored: a file does not choose where
    results go, how many workers run or what is uploaded); the policy's acting keys where the command line set them.
    """
    set_here = OmegaConf.create()
    for key in overridden:
        value = OmegaConf.select(cfg, key)
        if key in AGENT_KEYS and value is not None:  # null = the stored one
            OmegaConf.update(set_here, key, value)
    model = {key: value for key, value in stored.items() if key != "eval"}
    merged = OmegaConf.merge(model, {"eval": OmegaConf.to_container(cfg.eval)}, set_here)
    return OmegaConf.to_container(merged, resolve=True)


def main(argv: Sequence[str]) -> dict:
    """Evaluate as the command line `eval_vla.py *argv` would, without Hydra's global state (tests call this)."""
    return evaluate_checkpoint(compose_config(argv), argv)


def evaluate_checkpoint(cfg: DictConfig, overrides: Sequence[str]) -> dict:
    """Evaluate cfg.ckpt_path; `overrides`: the command line's `key=value` list, whose keys win over the stored config."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise SystemExit(f"eval_vla.py needs the checkpoint to evaluate: pass ckpt_path=runs/<run>/policy.pt.\n{USAGE}")
    validate_eval_settings(cfg.eval)
    device = resolve_device(cfg.device, key="device")
    ckpt_path = Path(cfg.ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    selection = weight_selection(checkpoint)  # read before the stored eval settings are replaced
    checkpoint["config"] = checkpoint_config(cfg, checkpoint["config"], override_keys(overrides))
    use_ema = checkpoint["config"]["eval"]["use_ema"]
    agent, cfg, weights = build_agent_from_checkpoint(checkpoint, device, use_ema=use_ema, source=ckpt_path)
    if use_ema and weights == "raw":
        print(f"{ckpt_path} holds no EMA weights (trained with train.use_ema=false): evaluating the trained weights.")
    if cfg.eval.task is None:
        raise ValueError("The checkpoint has no built-in task to evaluate in (eval.task is null). Pass eval.task=sim_transfer or another registered task.")
    output_dir = Path(cfg.eval.output_dir or default_output_dir(ckpt_path))
    agent.eval()  # the fast paths fold frozen statistics; the evaluator acts in eval mode anyway
    apply_eval_fast_paths(agent, cfg.eval)
    lock = RunDirLock(output_dir, holder="another evaluation", fix="Wait for it, or pass another eval.output_dir.")
    stop = GracefulStop("ending the rollouts and writing the summary of the finished episodes (send it again to stop "
                        "at once, without one)")
    try:
        with stop:
            summary = evaluate_agent(
                agent, cfg, num_episodes=cfg.eval.num_episodes, seed=cfg.eval.seed, output_dir=output_dir,
                record_video=cfg.eval.record_video, should_stop=lambda: stop.requested,
            )
        summary.update(
            checkpoint=str(ckpt_path), global_step=checkpoint["global_step"], weights=weights,
            experiment=cfg.get("recipe", {}).get("name"), training_seed=cfg.train.seed, policy=policy_name(cfg.agent),
            selection=selection,
            selection_overlap=len(scored_selection_seeds(summary, selection)),
            stopped_by=signal.Signals(stop.signum).name if stop.requested else None,
        )
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if cfg.eval.swanlab and not summary["partial"]:  # a partial score would stand beside complete ones unmarked
            log_to_swanlab(summary, cfg, ckpt_path)
    except NoEpisodeFinished as error:
        print(error, file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    finally:
        lock.release()
    print(report(summary, cfg))
    if stop.requested:
        raise SystemExit(128 + stop.signum)
    return summary


def run_dir_of(ckpt_path: Path) -> Path:
    """The training run a checkpoint belongs to: <run>/policy.pt or <run>/checkpoints/<name>.pt -> <run>."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def default_output_dir(ckpt_path: Path) -> Path:
    """<run>/eval for a run's policy.pt or checkpoint; <dir>/eval/<name> for another file, such as a shipped policy."""
    if ckpt_path.name == "policy.pt" or ckpt_path.parent.name == "checkpoints":
        return run_dir_of(ckpt_path) / "eval"
    return ckpt_path.parent / "eval" / ckpt_path.stem


def report(summary: dict, cfg) -> str:
    """The evaluation at a glance: what was scored, success with its interval, how far the failures got, speed,
    and where the media are; a warning when the scored seeds overlap those the weights were selected on."""
    episodes = summary["episodes"]
    reached = ", ".join(f">= {stage}: {count}" for stage, count in enumerate(summary["stage_counts"], start=1))
    overlap = scored_selection_seeds(summary, summary["selection"])
    rows = [
        ("experiment", f"{summary['experiment'] or 'none (composed by hand)'}, training seed {summary['training_seed']}"),
        ("checkpoint", f"{summary['checkpoint']} (step {summary['global_step']}, {summary['weights']} weights)"),
        ("selected as", describe_selection(summary["selection"])),
        ("policy", f"{summary['policy']} ({cfg.agent._target_.rsplit('.', 1)[-1]}, {cfg.agent.inference_steps} sampling step(s))"),
        ("success", f"{format_rate(summary['successes'], len(episodes))} "
                    f"on seeds {summary['seed']}-{summary['seed'] + len(episodes) - 1}"),
        ("episodes reaching reward", reached),
        ("mean return", f"{summary['mean_return']:.1f} (mean max reward {summary['mean_max_reward']:.2f})"),
        ("inference", f"{summary['inference_ms']:.2f} ms per env step (loop {summary['loop_total_ms']:.2f} ms)"),
        ("summary", summary["summary_path"]),
    ]
    if summary.get("videos"):
        rows.append(("videos", f"{len(summary['videos']) // 2} episodes, e.g. {summary['videos'][0]}"))
    if summary.get("contact_sheet"):
        rows.append(("contact sheet", summary["contact_sheet"]))
    if summary["partial"]:
        rows.append((
            "PARTIAL",
            f"stopped by {summary['stopped_by']} after {len(episodes)} of {summary['requested_episodes']} episodes: "
            f"the success rate is over the {len(episodes)} finished ones (those of eval.num_episodes={len(episodes)}).",
        ))
    if overlap:
        rows.append((
            "WARNING",
            f"{len(overlap)} of the scored seeds ({overlap[0]}-{overlap[-1]}) are seeds these weights "
            f"{'were' if summary['selection']['rule'] == 'best_rollout' else 'may have been'} selected on: that part "
            f"of the score is not held out. Score on other seeds (eval.seed=...).",
        ))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def log_to_swanlab(summary: dict, cfg, ckpt_path: Path) -> None:
    """Log the evaluation next to its training run: same project and swanlog dir, grouped with the run.

    SwanLab's local and offline modes cannot append to a finished experiment, so the evaluation is its own
    experiment named `<run>-eval-nfe<N>` in the run's group.
    """
    run_dir = run_dir_of(ckpt_path)
    name = cfg.train.swanlab_experiment_name or run_dir.name
    logger = ExperimentLogger(
        run_dir,
        use_swanlab=True,
        project=cfg.train.swanlab_project,
        mode=cfg.eval.swanlab_mode,
        experiment_name=f"{name}-eval-nfe{cfg.agent.inference_steps}",
        group=name,
        config=OmegaConf.to_container(cfg, resolve=True),
        jsonl_name="eval_logs.json.txt",
    )
    logger.log_rollout_summary("eval", summary, summary["global_step"])
    logger.finish()


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg, HydraConfig.get().overrides.task)


def cli() -> None:
    """Console-script entry point (roboimi-eval): Hydra's command line, with unknown keys named first."""
    # The parser hydra.main itself uses, so flag values (`--cfg job`) are not taken for overrides.
    override_keys(get_args_parser().parse_args().overrides)
    hydra_main()


if __name__ == "__main__":
    cli()
