"""How much a trained policy's plan depends on its initial noise, and how far its plans lie from the demonstrations.

For recorded training samples (the observation window and the demonstrated chunk), each policy plans `--draws`
times from fresh noise and once from zero noise. Reported, in raw action units over the executed window
(`num_action_steps` from the current step), averaged over actions, steps and samples:

* spread: the std of the plans across noise draws (0 for a deterministic policy);
* |draw - demo|: the mean absolute error of one plan;
* |mean - demo|: the error of the plans' mean;
* |zero noise - demo|: the error of the plan from zero noise (`agent.noise_scale=0`).

    python benchmarks/plan_spread.py --checkpoint IMF-1=runs/<imf run>/checkpoints/last.pt \
        --checkpoint DDIM-10=runs/<ddim run>/checkpoints/last.pt --batches 2
"""

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import trained_agent_batches  # noqa: E402


@torch.inference_mode()
def plan_errors(agent, batch: dict, draws: int) -> dict:
    """The four numbers above for one batch of B samples; the observations are encoded once for all plans."""
    window = slice(agent.obs_horizon - 1, agent.obs_horizon - 1 + agent.num_action_steps)
    demo = batch["action"][:, window].float()  # (B, num_action_steps, A)
    cond = agent.encode_observation(batch["images"], batch["qpos"])  # (B, obs_horizon, cond_dim)

    def plan(noise=None):  # (B, num_action_steps, A) in raw action units
        return agent.unnormalize_action(agent.sample_actions(cond, noise=noise))[:, window]

    plans = torch.stack([plan() for _ in range(draws)])  # (draws, B, num_action_steps, A)
    zero_plan = plan(torch.zeros(demo.shape[0], agent.pred_horizon, agent.action_dim))
    return {
        "spread": plans.std(0).mean().item(),
        "|draw - demo|": (plans - demo).abs().mean().item(),
        "|mean - demo|": (plans.mean(0) - demo).abs().mean().item(),
        "|zero noise - demo|": (zero_plan - demo).abs().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH", help="a policy to measure")
    parser.add_argument("--dataset", default=None, help="default: each checkpoint's data.dataset_dir")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--draws", type=int, default=16, help="plans from fresh noise per sample")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        if not path:
            parser.error(f"--checkpoint {spec!r}: write NAME=PATH, e.g. IMF-1=runs/<run>/checkpoints/last.pt")
        agent, _, weights, batches = trained_agent_batches(path, args.dataset, args.batch_size, args.batches)
        per_batch = [plan_errors(agent, batch, args.draws) for batch in batches]
        results[name] = {key: sum(b[key] for b in per_batch) / len(per_batch) for key in per_batch[0]}
        print(f"{name} ({path}, {weights} weights, {agent.inference_steps} step(s)): "
              + ", ".join(f"{key} {value:.4f}" for key, value in results[name].items()), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
