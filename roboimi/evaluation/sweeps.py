"""Evaluating the runs of a training sweep (train_vla.py -m ...) on the same episode seeds, and the table of it.

A sweep dir holds one run dir per job (hydra.sweep.subdir), each with its stored config (.hydra/config.yaml) and,
once trained, policy.pt. Every run is scored by eval_vla.py into <run>/eval_<label>/ with the same settings, then
the runs are grouped by experiment and acting settings: per training seed, the mean and standard deviation over
seeds, the worst seed, and the pooled rate with its 95 % interval.
"""
import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from roboimi.evaluation.success_stats import aggregate_runs, format_rate, paired_difference

WEIGHTS = {"final": "policy.pt", "best_rollout": "checkpoints/best_rollout.pt"}


def sweep_runs(sweep_dir: Path, pattern: str = "*") -> list[Path]:
    """The run dirs of a sweep whose names match the glob `pattern` (dirs holding a stored .hydra/config.yaml), in
    name order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir={sweep_dir} is not a directory. Pass the hydra.sweep.dir of a train_vla.py -m run.")
    runs = sorted(path.parent.parent for path in sweep_dir.glob(f"{pattern}/.hydra/config.yaml"))
    if not runs:
        raise FileNotFoundError(
            f"sweep_dir={sweep_dir} holds no run dirs named {pattern} (<run>/.hydra/config.yaml): is it a train_vla.py -m "
            f"sweep dir, and does runs= match its run names?"
        )
    return runs


def eval_label(weights: str, eval_overrides: Sequence[str]) -> str:
    """The eval dir name of one setting: `eval_final`, `eval_final_agent.inference_steps-2_seed-2000`, ...;
    worker counts and media do not change the result and stay out."""
    kept = sorted(o for o in eval_overrides if not o.startswith(("eval.num_workers=", "eval.record_video=", "eval.video")))
    return "_".join([f"eval_{weights}", *(o.removeprefix("eval.").replace("=", "-") for o in kept)])


def group_order(key: tuple) -> tuple:
    """(experiment, policy) groups in reading order: the IMF policies first, then by name."""
    experiment, policy = key
    return (not policy.startswith("IMF"), str(experiment), policy)


def aggregate_sweep(evaluations: Sequence[dict]) -> list[dict]:
    """Group evaluations ({experiment, policy, training_seed, dataset, outcomes, seeds}) by (experiment, policy) and
    aggregate each group over its training seeds. Every group must be scored on the same episode seeds."""
    groups = defaultdict(list)
    for evaluation in evaluations:
        groups[(evaluation["experiment"], evaluation["policy"])].append(evaluation)
    rows = []
    for (experiment, policy), members in sorted(groups.items(), key=lambda item: group_order(item[0])):
        episode_seeds = {tuple(m["seeds"]) for m in members}
        if len(episode_seeds) != 1:
            raise ValueError(f"The runs of {experiment} ({policy}) were scored on different episode seeds; evaluate them alike.")
        members = sorted(members, key=lambda m: m["training_seed"])
        aggregate = aggregate_runs({f"seed {m['training_seed']}": m["outcomes"] for m in members})
        seeds = episode_seeds.pop()
        rows.append({
            "experiment": experiment, "policy": policy, "episode_seeds": [seeds[0], seeds[-1]],
            "training_seeds": [m["training_seed"] for m in members], **aggregate,
        })
    return rows


def paired_comparisons(evaluations: Sequence[dict]) -> list[dict]:
    """For each two (experiment, policy) groups trained on the same demonstrations and scored on the same training
    seeds and episode seeds, the paired difference of their success over all (training seed, episode) pairs: A's
    run of seed k against B's run of seed k, episode by episode."""
    groups = defaultdict(dict)
    for evaluation in evaluations:
        groups[(evaluation["experiment"], evaluation["policy"])][evaluation["training_seed"]] = evaluation
    keys = sorted(groups, key=group_order)
    comparisons = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            seeds = sorted(groups[a])
            if sorted(groups[b]) != seeds or any(
                (groups[a][k]["seeds"], groups[a][k]["dataset"]) != (groups[b][k]["seeds"], groups[b][k]["dataset"])
                for k in seeds
            ):
                continue
            outcomes_a = [o for k in seeds for o in groups[a][k]["outcomes"]]
            outcomes_b = [o for k in seeds for o in groups[b][k]["outcomes"]]
            comparisons.append({"a": list(a), "b": list(b), "training_seeds": seeds, **paired_difference(outcomes_a, outcomes_b)})
    return comparisons


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per (experiment, policy): each training seed's successes, mean +- std, worst seed, pooled rate."""
    lines = [
        "| experiment | policy | episode seeds | per training seed | mean ± std | worst seed | pooled (95 % CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_seed = ", ".join(
            f"{label.split()[-1]}: {run['successes']} / {run['n']}" for label, run in row["runs"].items()
        )
        pooled = row["pooled"]
        lines.append(
            f"| {row['experiment']} | {row['policy']} | {row['episode_seeds'][0]}-{row['episode_seeds'][1]} | {per_seed} "
            f"| {100 * row['mean']:.0f} ± {100 * row['std']:.0f} % | {100 * row['min']:.0f} % "
            f"| {format_rate(pooled['successes'], pooled['n'])} |"
        )
    return "\n".join(lines)


def markdown_comparisons(comparisons: Sequence[dict]) -> str:
    """One line per pair: the paired difference A - B over all training seeds' episodes, with its interval."""
    lines = ["| A | B | training seeds | A - B (95 % CI) | A alone / B alone succeed | reading |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        low, high = c["interval"]
        reading = "within the noise" if low <= 0 <= high else ("A ahead" if low > 0 else "B ahead")
        lines.append(
            f"| {c['a'][0]} {c['a'][1]} | {c['b'][0]} {c['b'][1]} | {', '.join(map(str, c['training_seeds']))} "
            f"| {100 * c['difference']:+.0f} points ({100 * low:+.0f} to {100 * high:+.0f}) | {c['a_only']} / {c['b_only']} "
            f"of {c['n']} | {reading} |"
        )
    return "\n".join(lines)


def evaluate_sweep(sweep_dir: Path, weights: str, eval_overrides: Sequence[str], evaluate, runs: str = "*") -> dict:
    """Score every trained run of `sweep_dir` named like `runs` with `evaluate(argv) -> summary` (eval_vla.main) under
    the same `eval_overrides`, keep finished scores, and write <sweep_dir>/<label>.md and .json with the table (the
    label names `runs` too when it selects a part of the sweep).

    Runs without the weights yet (still training) are listed as skipped. Returns the report ({"sweep_dir", "weights",
    "eval_overrides", "rows", "comparisons", "skipped"}) with its markdown ("table") and where it went ("path").
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} is invalid: one of {list(WEIGHTS)}.")
    sweep_dir = Path(sweep_dir)
    label = eval_label(weights, eval_overrides)
    table_name = label if runs == "*" else f"{label}_runs-{runs.replace('*', '').replace('/', '')}"
    evaluations, skipped = [], []
    for run in sweep_runs(sweep_dir, runs):
        ckpt = run / WEIGHTS[weights]
        if not ckpt.is_file():
            skipped.append(f"{run.name}: no {WEIGHTS[weights]} (still training, or stopped)")
            continue
        out = run / label
        summary_path = out / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if summary and not summary.get("partial"):  # a stopped evaluation is scored again
            print(f"{run.name}: scored already ({summary_path})")
        else:
            # Quoted: run dir names may hold characters the override grammar reads (=, ',').
            summary = evaluate([f"ckpt_path='{ckpt}'", f"eval.output_dir='{out}'", *eval_overrides])
        evaluations.append({
            "experiment": summary["experiment"] or "none",
            "policy": summary["policy"],
            "training_seed": summary["training_seed"],
            "dataset": OmegaConf.load(run / ".hydra" / "config.yaml").data.dataset_dir,
            "outcomes": [bool(e["success"]) for e in summary["episodes"]],
            "seeds": [e["seed"] for e in summary["episodes"]],
        })
    report = {
        "sweep_dir": str(sweep_dir), "runs": runs, "weights": weights, "eval_overrides": list(eval_overrides),
        "rows": aggregate_sweep(evaluations), "comparisons": paired_comparisons(evaluations), "skipped": skipped,
    }
    (sweep_dir / f"{table_name}.json").write_text(json.dumps(report, indent=2))
    table = render_report(report)
    (sweep_dir / f"{table_name}.md").write_text(table + "\n")
    return {**report, "table": table, "path": sweep_dir / f"{table_name}.md"}


def render_report(report: dict) -> str:
    """The markdown of an evaluate_sweep report: what was scored, the table over seeds, the paired differences."""
    settings = " ".join(report["eval_overrides"]) or "defaults"
    runs = "" if report.get("runs", "*") == "*" else f" (runs `{report['runs']}`)"
    parts = [
        f"Sweep `{report['sweep_dir']}`{runs}, {report['weights']} weights ({WEIGHTS[report['weights']]}, EMA), "
        f"evaluation settings: `{settings}`.",
        markdown_table(report["rows"]),
    ]
    if report["comparisons"]:
        parts += ["Paired differences (the same training seeds, episode by episode):", markdown_comparisons(report["comparisons"])]
    parts += [f"Skipped {line}" for line in report["skipped"]]
    return "\n\n".join(parts)
