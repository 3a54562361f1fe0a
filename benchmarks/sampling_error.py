"""Open-loop error of a policy's action chunks against held-out demonstrations, at 1, 2, 4... sampling steps.

    python benchmarks/sampling_error.py --checkpoint <run>/policy.pt --dataset-dir data/sim_insertion_state_1000 \
        --first-episode 500 --steps 1 2 4

For --windows observation windows drawn from the episodes from --first-episode on (demos the policy did not train
on), each chunk is sampled from --draws noise draws at every step count. Printed per step count, in the normalized
action space the policy is trained in ([-1, 1] per dimension), over the steps a rollout plays:
  error     RMS distance of a sampled chunk from the demo's chunk;
  spread    RMS standard deviation of the chunk over the noise draws (0 for a policy that ignores its noise);
  bias      RMS distance of the mean over the draws from the demo's chunk.
error^2 = bias^2 + spread^2 (up to the draws' finite count). Scripted demos are one chunk per observation, so the
ideal policy has zero spread at every step count; a step count with a larger error adds error of its own.

--swap frames (or state) gives each window the camera frames (or joint state) of another window: a policy whose
error hardly grows has not learned to read that input.
"""
import argparse

import torch

from roboimi.vla.data import build_datasets
from roboimi.vla.training.checkpoint import build_agent_from_checkpoint, load_checkpoint


def sampled_chunks(agent, cond: torch.Tensor, num_steps: int, noise: torch.Tensor) -> torch.Tensor:
    """(draws, B, pred_horizon, A) normalized chunks, one per noise draw (noise: (draws, B, pred_horizon, A)), from
    the encoded observations cond (B, obs_horizon, cond_dim)."""
    return torch.stack([agent.sample_actions(cond, num_steps=num_steps, noise=draw) for draw in noise])


def chunk_errors(chunks: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> dict:
    """RMS error, spread and bias of sampled chunks (draws, B, T, A) against target (B, T, A), over the (B, T) steps
    where `keep` is true and every action dimension."""

    def rms(x: torch.Tensor) -> float:
        return x[keep].pow(2).mean().sqrt().item()

    return {
        "error": rms((chunks - target).pow(2).mean(0).sqrt()),
        "spread": rms(chunks.std(0)),
        "bias": rms(chunks.mean(0) - target),
    }


def swapped_observation(batch: dict, swap: str) -> tuple[dict, torch.Tensor]:
    """The batch's images {cam: (B, T, 3, H, W)} and qpos (B, T, D), with the part `swap` ('frames', 'state' or
    'none') of each window taken from the window before it (rolled by one along B)."""
    images, qpos = batch["images"], batch["qpos"]
    if swap == "frames":
        images = {cam: frames.roll(1, dims=0) for cam, frames in images.items()}
    elif swap == "state":
        qpos = qpos.roll(1, dims=0)
    return images, qpos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--first-episode", type=int, default=0, help="use episodes from this position on (sorted)")
    parser.add_argument("--windows", type=int, default=512)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--swap", choices=("none", "frames", "state"), default="none",
                        help="give each window another window's camera frames or joint state")
    args = parser.parse_args()
    torch.set_num_threads(1)

    agent, cfg, weights = build_agent_from_checkpoint(load_checkpoint(args.checkpoint), torch.device("cpu"))
    agent.eval()
    data = build_datasets(
        args.dataset_dir, cfg.data.camera_names, agent.obs_horizon, agent.pred_horizon,
        state_keys=cfg.data.state_keys,
    ).train
    first_sample = sum(data.episodes[i].length for i in range(args.first_episode))
    generator = torch.Generator().manual_seed(args.seed)
    indices = first_sample + torch.randperm(len(data) - first_sample, generator=generator)[: args.windows]
    batch = torch.utils.data.default_collate([data[int(i)] for i in indices])
    target = agent.normalize_action(batch["action"])  # (B, pred_horizon, A)
    played = slice(agent.obs_horizon - 1, agent.obs_horizon - 1 + agent.num_action_steps)
    keep = ~batch["action_is_pad"][:, played]  # (B, played)
    noise = agent.noise_scale * torch.randn((args.draws, *target.shape), generator=generator)

    print(f"{args.checkpoint} ({weights} weights): {len(indices)} windows from episodes {args.first_episode}.. of "
          f"{args.dataset_dir}, {args.draws} noise draws each, steps {played.start}..{played.stop - 1} of each chunk"
          + ("" if args.swap == "none" else f", each window with another window's {args.swap}"))
    print(f"{'steps':>5} {'error':>8} {'spread':>8} {'bias':>8}")
    with torch.inference_mode():
        cond = agent.encode_observation(*swapped_observation(batch, args.swap))  # once: every step count plans from it
        for num_steps in args.steps:
            chunks = sampled_chunks(agent, cond, num_steps, noise)[:, :, played]  # (draws, B, played, A)
            errors = chunk_errors(chunks, target[:, played], keep)
            print(f"{num_steps:>5} {errors['error']:8.4f} {errors['spread']:8.4f} {errors['bias']:8.4f}")


if __name__ == "__main__":
    main()
