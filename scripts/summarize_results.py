"""Figures and a markdown table from training run dirs and eval dirs (train_vla.py runs and eval_vla.py output dirs).

A training run dir holds logs.json.txt (one JSON object per line: step, time, train/loss, train/lr, ...); an
eval dir holds summary.json (success_rate, mean_return, mean_max_reward, num_episodes, mean_inference_ms,
episodes). Writes <figures-dir>/loss_curves.png, success_vs_nfe.png, latency_vs_nfe.png and, when the runs logged
rollout validation (rollout/success_rate), success_vs_step.png; prints the table (or writes it to --out).

    python scripts/summarize_results.py \
        --train DDPM runs/compare/train_ddpm --train IMF runs/compare/train_imf \
        --eval DDIM-10 10 runs/compare/eval_ddpm_ddim10 --eval IMF-1 1 runs/compare/eval_imf_1 \
        --eval IMF-2 2 runs/compare/eval_imf_2 --figures-dir docs/figures --out runs/compare/results.md
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def read_training_log(run_dir: Path) -> list[dict]:
    path = run_dir / "logs.json.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Pass the Hydra run dir of a train_vla.py run (it writes logs.json.txt), "
            "or train first."
        )
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not any("train/loss" in r for r in records):
        raise ValueError(f"{path} has no train/loss entries; train for at least train.log_freq steps.")
    return records


def read_eval_summary(eval_dir: Path) -> dict:
    path = eval_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. Run eval_vla.py with eval.output_dir={eval_dir} first.")
    return json.loads(path.read_text())


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def success_stderr(summary: dict) -> float:
    """Binomial standard error of the success rate (fraction)."""
    p, n = summary["success_rate"], summary["num_episodes"]
    return math.sqrt(p * (1 - p) / n)


def save_figure(fig, ax, path: Path, grid_which: str = "major") -> None:
    ax.grid(alpha=0.3, which=grid_which)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss_curves(runs: dict[str, list[dict]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, records), colour in zip(runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax.plot(*series(records, "train/loss"), color=colour, label=f"{label} train")
        steps, values = series(records, "val/loss")
        if steps:
            ax.plot(steps, values, color=colour, linestyle="--", marker="o", markersize=3, label=f"{label} val")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (each agent's own objective; scales differ)")
    ax.set_yscale("log")
    ax.set_title("Training loss")
    save_figure(fig, ax, path)


def plot_success_curves(runs: dict[str, list[dict]], path: Path) -> bool:
    """Rollout-validation success vs optimizer step; False (no file) when no run logged rollouts."""
    curves = {label: series(records, "rollout/success_rate") for label, records in runs.items()}
    if not any(steps for steps, _ in curves.values()):
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (steps, rates) in curves.items():
        ax.plot(steps, [100 * r for r in rates], marker="o", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rollout validation success (%)")
    ax.set_ylim(-5, 105)
    ax.set_title("Success during training (validation rollouts, held-out seeds)")
    save_figure(fig, ax, path)
    return True


def plot_against_nfe(evals: list[tuple[str, int, dict]], path: Path, value, error, ylabel: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, nfe, summary in evals:
        ax.errorbar([nfe], [value(summary)], yerr=[error(summary)] if error else None, fmt="o", capsize=4, label=label)
        ax.annotate(label, (nfe, value(summary)), textcoords="offset points", xytext=(6, 6))
    ax.set_xscale("log")
    ax.set_xlabel("network function evaluations per action chunk (NFE)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    save_figure(fig, ax, path, grid_which="both")


def markdown_tables(runs: dict[str, list[dict]], evals: list[tuple[str, int, dict]]) -> str:
    lines = [
        "| policy | NFE | success rate (%) | successes / episodes | episodes reaching reward >= 1 / 2 / 3 "
        "| mean return | mean max reward | inference (ms per env step) | checkpoint step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, nfe, s in evals:
        successes = sum(1 for e in s["episodes"] if e["success"])
        stages = " / ".join(str(sum(1 for e in s["episodes"] if e["max_reward"] >= level)) for level in (1, 2, 3))
        lines.append(
            f"| {label} | {nfe} | {100 * s['success_rate']:.1f} ± {100 * success_stderr(s):.1f} | "
            f"{successes} / {s['num_episodes']} | {stages} | {s['mean_return']:.2f} | {s['mean_max_reward']:.2f} | "
            f"{s['mean_inference_ms']:.2f} | {s.get('global_step', 'n/a')} |"
        )
    lines += [
        "",
        "Success rate ± binomial standard error. Reward stages of the task (sim_transfer: 1 the right gripper touches "
        "the cube, 2 lifts it, 3 the left gripper touches it too, 4 transferred). Inference time is the policy call "
        "per environment step, averaged over all steps (one sampling per executed action chunk, queue pops in "
        "between).",
        "",
        "| training run | steps | final train loss | logged wall time (h) | validation success by step (%) |",
        "|---|---|---|---|---|",
    ]
    for label, records in runs.items():
        steps, losses = series(records, "train/loss")
        hours = (records[-1]["time"] - records[0]["time"]) / 3600
        curve = ", ".join(f"{s}: {100 * r:.0f}" for s, r in zip(*series(records, "rollout/success_rate"))) or "n/a"
        lines.append(f"| {label} | {steps[-1]} | {losses[-1]:.4f} | {hours:.2f} | {curve} |")
    lines += ["", "Logged wall time spans the first to the last log record (excludes start-up and the first log_freq steps)."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs=2, action="append", default=[], metavar=("LABEL", "RUN_DIR"),
                        help="a train_vla.py run dir; repeat per agent")
    parser.add_argument("--eval", nargs=3, action="append", default=[], metavar=("LABEL", "NFE", "EVAL_DIR"),
                        help="an eval_vla.py output dir and the head calls per chunk it used; repeat per eval")
    parser.add_argument("--figures-dir", default="docs/figures")
    parser.add_argument("--out", help="write the markdown here instead of stdout")
    args = parser.parse_args()
    if not args.train or not args.eval:
        parser.error("pass at least one --train LABEL RUN_DIR and one --eval LABEL NFE EVAL_DIR")

    runs = {label: read_training_log(Path(run_dir)) for label, run_dir in args.train}
    evals = [(label, int(nfe), read_eval_summary(Path(eval_dir))) for label, nfe, eval_dir in args.eval]
    figures = Path(args.figures_dir)
    figures.mkdir(parents=True, exist_ok=True)
    plot_loss_curves(runs, figures / "loss_curves.png")
    plot_against_nfe(
        evals, figures / "success_vs_nfe.png", lambda s: 100 * s["success_rate"], lambda s: 100 * success_stderr(s),
        "success rate (%)", "Rollout success vs sampling cost",
    )
    plot_against_nfe(
        evals, figures / "latency_vs_nfe.png", lambda s: s["mean_inference_ms"], None,
        "policy inference (ms per env step)", "Rollout inference time vs sampling cost",
    )
    curves = plot_success_curves(runs, figures / "success_vs_step.png")
    table = markdown_tables(runs, evals)
    if args.out:
        Path(args.out).write_text(table)
        print(f"wrote {args.out} and {4 if curves else 3} figures in {figures}/")
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
