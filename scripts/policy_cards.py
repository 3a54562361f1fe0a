"""The table of shipped policies (policies/README.md), written from what each file records and its committed score.

    python scripts/policy_cards.py score policies/<name>.pt <eval dir>   # keep an eval_vla.py score: policies/scores/<name>.json
    python scripts/policy_cards.py table                                 # the markdown table, from the files and scores
    python scripts/policy_cards.py write                                 # ... written into policies/README.md

Each policy file records its experiment (config.recipe.name), training seed, step and how its weights were chosen
(`selection`); each score holds the episodes eval_vla.py played (seeds, outcomes, stages). The table says whether
the scored seeds are held out from the seeds the weights were picked on.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roboimi.vla.training.checkpoint import (  # noqa: E402
    describe_selection, load_checkpoint, scored_selection_seeds, weight_selection,
)
from roboimi.evaluation.success_stats import format_rate  # noqa: E402

POLICIES = ROOT / "policies"
SCORES = POLICIES / "scores"
SCORE_KEYS = ("policy", "seed", "num_episodes", "successes", "success_interval", "stage_counts", "global_step", "weights")


def keep_score(policy_path: Path, eval_dir: Path) -> Path:
    """policies/scores/<name>.json: the evaluation's counts and its episodes' seeds and outcomes."""
    summary = json.loads((eval_dir / "summary.json").read_text())
    if Path(summary["checkpoint"]).resolve() != policy_path.resolve():
        raise SystemExit(f"{eval_dir} scored {summary['checkpoint']}, not {policy_path}.")
    score = {key: summary[key] for key in SCORE_KEYS}
    score["episodes"] = [{key: e[key] for key in ("seed", "success", "max_reward")} for e in summary["episodes"]]
    path = SCORES / f"{policy_path.stem}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(score, indent=1) + "\n")
    return path


def table() -> str:
    lines = [
        "| file | experiment | training seed | step | weights selected as | policy | success (95 % CI) | scored on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(POLICIES.glob("*.pt")):
        checkpoint = load_checkpoint(path)
        config, selection = checkpoint["config"], weight_selection(checkpoint)
        score_path = SCORES / f"{path.stem}.json"
        if score_path.is_file():
            score = json.loads(score_path.read_text())
            first, last = score["seed"], score["seed"] + score["num_episodes"] - 1
            overlap = scored_selection_seeds(score, selection)
            held_out = "held out" if not overlap else f"{len(overlap)} seeds also used to pick the weights"
            policy, success = score["policy"], format_rate(score["successes"], score["num_episodes"])
            scored = f"seeds {first}-{last}, {held_out}"
        else:
            policy, success, scored = "", "not scored yet", ""
        lines.append(
            f"| `{path.name}` | `{config['recipe']['name']}` | {config['train']['seed']} | {checkpoint['global_step']} "
            f"| {describe_selection(selection)} | {policy} | {success} | {scored} |"
        )
    return "\n".join(lines)


def write_readme() -> Path:
    """Put the table between policies/README.md's <!-- policy-table --> markers."""
    readme = POLICIES / "README.md"
    text, count = re.subn(
        r"<!-- policy-table -->\n.*?<!-- /policy-table -->",
        lambda _: f"<!-- policy-table -->\n{table()}\n<!-- /policy-table -->", readme.read_text(), flags=re.S,
    )
    if count != 1:
        raise SystemExit(f"{readme} needs one <!-- policy-table --> ... <!-- /policy-table --> pair of markers.")
    readme.write_text(text)
    return readme


def main(argv) -> None:
    if argv == ["table"]:
        print(table())
    elif argv == ["write"]:
        print(write_readme())
    elif argv[:1] == ["score"] and len(argv) == 3:
        print(keep_score(Path(argv[1]), Path(argv[2])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
