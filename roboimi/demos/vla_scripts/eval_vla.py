"""Evaluate a trained checkpoint with headless rollouts in its built-in task.

    python roboimi/demos/vla_scripts/eval_vla.py ckpt_path=runs/<run>/checkpoints/last.pt eval.num_episodes=50 eval.output_dir=eval_out

The agent is rebuilt from the checkpoint alone (config, weights, normalization stats). Any `eval.*` key, and
`agent.inference_steps`, can be overridden; the rest of the stored config is used as trained.
Rollouts act with the EMA weights when the checkpoint has them; `eval.use_ema=false` evaluates the trained weights.
Writes <output_dir>/summary.json (success_rate, mean_return, num_episodes, mean_inference_ms, weights, per-episode
entries).
"""
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from roboimi.vla import CONFIG_DIR
from roboimi.vla.checkpoint import build_agent_from_checkpoint, load_checkpoint
from roboimi.vla.evaluation import evaluate_agent
from roboimi.vla.experiment_logger import ExperimentLogger
from roboimi.vla.fast_paths import compile_head
from roboimi.vla.runtime import resolve_device

EVAL_DEFAULTS = CONFIG_DIR / "eval" / "eval.yaml"

OVERRIDABLE_PREFIXES = ("eval.", "agent.inference_steps", "device")


def parse_overrides(argv: list[str]):
    overrides = OmegaConf.from_dotlist(argv)
    unknown = [a.split("=", 1)[0] for a in argv if not a.startswith(("ckpt_path=",) + OVERRIDABLE_PREFIXES)]
    if unknown or "ckpt_path" not in overrides:
        raise SystemExit(
            "usage: eval_vla.py ckpt_path=<file.pt> [eval.num_episodes=N] [eval.output_dir=DIR] [eval.<key>=...] "
            "[agent.inference_steps=N] [device=auto|cpu|cuda]" + (f"\nunknown keys: {unknown}" if unknown else "")
        )
    return overrides


def main(argv: list[str]) -> dict:
    overrides = parse_overrides(argv)
    device = resolve_device(overrides.get("device", "auto"))
    ckpt_path = Path(overrides.ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    # Current eval defaults first, so checkpoints written before an eval key existed still evaluate.
    checkpoint["config"] = OmegaConf.to_container(
        OmegaConf.merge(
            {"eval": OmegaConf.load(EVAL_DEFAULTS)},
            checkpoint["config"],
            {k: v for k, v in overrides.items() if k in ("eval", "agent")},
        ),
        resolve=True,
    )
    use_ema = checkpoint["config"]["eval"]["use_ema"]
    agent, cfg, weights = build_agent_from_checkpoint(checkpoint, device, use_ema=use_ema)
    if use_ema and weights == "raw":
        print(f"{ckpt_path} holds no EMA weights (trained with train.use_ema=false): evaluating the trained weights.")
    if cfg.eval.task is None:
        raise ValueError("The checkpoint has no built-in task to evaluate in (eval.task is null). Pass eval.task=sim_transfer or another registered task.")
    output_dir = Path(cfg.eval.output_dir or ckpt_path.parent.parent / "eval")
    if cfg.eval.compile_head:
        compile_head(agent)
    summary = evaluate_agent(
        agent, cfg, num_episodes=cfg.eval.num_episodes, output_dir=output_dir, record_video=cfg.eval.record_video
    )
    summary["checkpoint"] = str(ckpt_path)
    summary["global_step"] = checkpoint["global_step"]
    summary["weights"] = weights
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if cfg.eval.swanlab:
        log_to_swanlab(summary, cfg, ckpt_path)
    print(report(summary, cfg))
    return summary


def report(summary: dict, cfg) -> str:
    """The evaluation at a glance: success, how far the failures got, speed, and where the media are."""
    episodes = summary["episodes"]
    stages = max(int(round(max(e["max_reward"] for e in episodes))), 1)
    reached = ", ".join(f">= {s}: {sum(e['max_reward'] >= s for e in episodes)}" for s in range(1, stages + 1))
    rows = [
        ("checkpoint", f"{summary['checkpoint']} (step {summary['global_step']}, {summary['weights']} weights)"),
        ("policy", f"{cfg.agent._target_.rsplit('.', 1)[-1]}, {cfg.agent.inference_steps} sampling step(s)"),
        ("success", f"{sum(e['success'] for e in episodes)} / {len(episodes)} ({100 * summary['success_rate']:.1f} %) "
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
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def log_to_swanlab(summary: dict, cfg, ckpt_path: Path) -> None:
    """Log the evaluation next to its training run: same project and swanlog dir, grouped with the run.

    SwanLab's local and offline modes cannot append to a finished experiment, so the evaluation is its own
    experiment named `<run>-eval-nfe<N>` in the run's group.
    """
    run_dir = ckpt_path.parent.parent
    name = cfg.train.swanlab_experiment_name or run_dir.name
    logger = ExperimentLogger(
        run_dir,
        use_swanlab=True,
        project=cfg.train.swanlab_project,
        mode=cfg.train.swanlab_mode,
        experiment_name=f"{name}-eval-nfe{cfg.agent.inference_steps}",
        group=name,
        config=OmegaConf.to_container(cfg, resolve=True),
        jsonl_name="eval_logs.json.txt",
    )
    logger.log_rollout_summary("eval", summary, summary["global_step"])
    logger.finish()


def cli() -> None:
    """Console-script entry point."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
