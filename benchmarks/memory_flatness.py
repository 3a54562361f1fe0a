"""Resident memory of a long training run and a long evaluation: does it stay flat?

    python benchmarks/memory_flatness.py --out runs/memory_flatness          # about 25 min on one core
    python benchmarks/memory_flatness.py --steps 600 --episodes 20 --out /tmp/mem   # a short check

Trains `experiment=state_transfer_imf` (its demos: `record_sim_episodes.py experiment=state_transfer_imf`) for
--steps steps in a child process and samples its resident set size (RSS) once a second against the step its
logs.json.txt has reached; then evaluates the run's policy over --episodes episodes with --workers rollout workers
and samples the RSS of the evaluator and its workers against the episodes finished (trajectory files written), and
how many worker processes are alive. Prints, and writes to <out>/memory.json, the growth between the early and the
last sample of each (training: step 1000 -> the last step; evaluation: episode 20 -> the last episode).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(process: psutil.Process, with_children: bool) -> tuple[float, int]:
    """(RSS in MiB of the process, plus its children when asked; the number of live children)."""
    try:
        children = process.children(recursive=True) if with_children else []
        total = process.memory_info().rss + sum(c.memory_info().rss for c in children if c.is_running())
        return total / 2**20, len(children)
    except psutil.NoSuchProcess:
        return 0.0, 0


def last_step(log: Path) -> int:
    if not log.is_file():
        return 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def sample(command: list[str], progress, with_children: bool, env: dict, log: Path) -> list[dict]:
    """Run `command` with its output in `log` (a pipe nobody reads would fill and stall it), sampling (progress, RSS,
    live children) once a second until it exits."""
    with open(log, "w") as output:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        process, samples = psutil.Process(child.pid), []
        while child.poll() is None:
            rss, children = rss_mib(process, with_children)
            if rss:
                samples.append({"progress": progress(), "rss_mib": rss, "children": children})
            time.sleep(1.0)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... exited with {child.returncode}; see {log}")
    return samples


def growth(samples: list[dict], early: int) -> dict:
    """RSS at the first sample at or past `early` progress and at the first sample of the final progress (later ones
    are the process shutting down), and the growth between them."""
    start = next(s for s in samples if s["progress"] >= early)
    end = next(s for s in samples if s["progress"] == samples[-1]["progress"])
    return {
        "early_progress": start["progress"], "early_rss_mib": round(start["rss_mib"], 1),
        "last_progress": end["progress"], "last_rss_mib": round(end["rss_mib"], 1),
        "growth_percent": round(100 * (end["rss_mib"] / start["rss_mib"] - 1), 2),
        "max_children": max(s["children"] for s in samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    run_dir, eval_dir = args.out / "run", args.out / "eval"
    for old in (run_dir, eval_dir):  # an earlier measurement's logs would be read as this one's progress
        shutil.rmtree(old, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    print(f"Training experiment=state_transfer_imf for {args.steps} steps in {run_dir}, then {args.episodes} "
          f"evaluation episodes with {args.workers} workers in {eval_dir}; sampling RSS once a second.", flush=True)
    train = sample(
        [sys.executable, "roboimi/demos/vla_scripts/train_vla.py", "experiment=state_transfer_imf",
         f"train.max_steps={args.steps}", f"hydra.run.dir={run_dir}", "train.overwrite=true"],
        lambda: last_step(run_dir / "logs.json.txt"), with_children=False, env=env, log=args.out / "train.log",
    )
    evaluation = sample(
        [sys.executable, "roboimi/demos/vla_scripts/eval_vla.py", f"ckpt_path={run_dir / 'policy.pt'}",
         f"eval.num_episodes={args.episodes}", f"eval.num_workers={args.workers}", f"eval.output_dir={eval_dir}",
         "eval.trajectory_image=false"],
        lambda: len(list(eval_dir.glob("trajectory_*.npz"))), with_children=True, env=env, log=args.out / "eval.log",
    )
    result = {
        "training": growth(train, early=min(1000, args.steps // 5)),
        "evaluation": growth(evaluation, early=min(20, args.episodes // 10)),
        "steps": args.steps, "episodes": args.episodes, "workers": args.workers,
        "training_samples": train, "evaluation_samples": evaluation,  # the curves behind the two growths
    }
    (args.out / "memory.json").write_text(json.dumps(result, indent=2))
    for name, unit in (("training", "step"), ("evaluation", "episode")):
        r = result[name]
        print(f"{name:<10}  RSS {r['early_rss_mib']} MiB at {unit} {r['early_progress']} -> {r['last_rss_mib']} MiB at "
              f"{unit} {r['last_progress']}: {r['growth_percent']:+.2f} %; at most {r['max_children']} child processes")
    print(f"Written to {args.out / 'memory.json'}")


if __name__ == "__main__":
    main()
