"""The paired difference of two evaluations scored on the same episode seeds, with its 95 % interval.

    python roboimi/demos/vla_scripts/compare_evals.py runs/a/eval runs/b/eval
    python roboimi/demos/vla_scripts/compare_evals.py a_seed0/eval b_seed0/eval a_seed1/eval b_seed1/eval   # pooled

Each argument is an eval_vla.py output dir (or its summary.json). The two of a pair must hold the same episode seeds
in the same order; the difference A - B uses the per-episode pairing (Newcombe's interval), which is narrower than
comparing two independent rates when the policies fail on the same hard episodes. More pairs (A1 B1 A2 B2 ..., e.g.
one per training seed of two recipes) pool their episodes into one difference.
"""
import json
import sys
from pathlib import Path

from roboimi.evaluation.success_stats import format_rate, paired_difference


def read_summary(path: str) -> dict:
    path = Path(path)
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: pass an eval_vla.py output dir (eval.output_dir) or its summary.json.")
    return json.loads(path.read_text())


def compare(pairs: list[tuple[dict, dict]]) -> dict:
    """paired_difference over the episodes of every pair of summaries (A, B), pooled."""
    outcomes_a, outcomes_b = [], []
    for a, b in pairs:
        seeds_a, seeds_b = ([e["seed"] for e in s["episodes"]] for s in (a, b))
        if seeds_a != seeds_b:
            raise SystemExit(
                f"The evaluations were scored on different episode seeds ({seeds_a[0]}.. x {len(seeds_a)} against "
                f"{seeds_b[0]}.. x {len(seeds_b)}): score both with the same eval.seed and eval.num_episodes."
            )
        outcomes_a += [e["success"] for e in a["episodes"]]
        outcomes_b += [e["success"] for e in b["episodes"]]
    return paired_difference(outcomes_a, outcomes_b)


def main(argv) -> dict:
    if not argv or len(argv) % 2:
        raise SystemExit("usage: compare_evals.py <eval dir A> <eval dir B> [<eval dir A2> <eval dir B2> ...]")
    summaries = [read_summary(path) for path in argv]
    pairs = list(zip(summaries[::2], summaries[1::2]))
    result = compare(pairs)
    low, high = result["interval"]
    verdict = "within the noise" if low <= 0 <= high else ("A is better" if low > 0 else "B is better")
    n = result["n"]
    a, b = pairs[0]
    names_a, names_b = (", ".join(argv[i::2]) for i in (0, 1))
    seeds = ", ".join(f"{s['episodes'][0]['seed']}-{s['episodes'][-1]['seed']}" for s, _ in pairs)
    print(
        f"A  {names_a}: {a.get('policy', '?')}, {format_rate(result['both'] + result['a_only'], n)}\n"
        f"B  {names_b}: {b.get('policy', '?')}, {format_rate(result['both'] + result['b_only'], n)}\n"
        f"A - B = {100 * result['difference']:+.1f} points (95 % CI {100 * low:+.1f} to {100 * high:+.1f}): {verdict}; "
        f"A alone succeeds in {result['a_only']}, B alone in {result['b_only']}, both in {result['both']}, "
        f"neither in {result['neither']} of {n} episodes (seeds {seeds})"
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
