"""Evaluate every run of a training sweep on the same episode seeds and write the table over training seeds.

    python roboimi/demos/vla_scripts/eval_sweep.py sweep_dir=runs/sweeps/state eval.num_episodes=100 eval.num_workers=2

`sweep_dir`: the hydra.sweep.dir of a `train_vla.py -m` run. `weights=final` (default: each run's policy.pt) or
`weights=best_rollout` (checkpoints/best_rollout.pt, picked on the validation seeds). `runs=<glob>` scores only the
run dirs whose names match (`runs='*insertion_imf*'`). Every other `key=value` is an
eval_vla.py setting (eval.*, agent.inference_steps, ...) applied to every run alike. Each run is scored into
<run>/eval_<label>/ (a finished score is kept, so a stopped evaluation continues); the table goes to
<sweep_dir>/eval_<label>.md and .json.
"""
import sys
from typing import Sequence

from roboimi.demos.vla_scripts import eval_vla
from roboimi.evaluation.sweeps import evaluate_sweep

USAGE = "usage: eval_sweep.py sweep_dir=<dir> [weights=final|best_rollout] [runs=<glob>] [eval.<key>=...] [agent.<key>=...]"
OWN_KEYS = ("sweep_dir=", "weights=", "runs=")


def main(argv: Sequence[str]) -> dict:
    settings = dict(arg.split("=", 1) for arg in argv if arg.startswith(OWN_KEYS))
    passed_on = [arg for arg in argv if not arg.startswith(OWN_KEYS)]
    if "sweep_dir" not in settings:
        raise SystemExit(f"eval_sweep.py needs sweep_dir=<the hydra.sweep.dir of a train_vla.py -m run>.\n{USAGE}")
    eval_vla.override_keys(passed_on)  # unknown keys are named before any run is scored
    result = evaluate_sweep(
        settings["sweep_dir"], settings.get("weights", "final"), passed_on, eval_vla.main, runs=settings.get("runs", "*")
    )
    print(f"\n{result['table']}\n" + "".join(f"skipped {line}\n" for line in result["skipped"]) + f"Table: {result['path']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
