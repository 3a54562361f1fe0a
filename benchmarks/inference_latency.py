"""How much faster does the IMF policy act than the DDIM baseline at the same head size?

Times one rollout query (batch 1, 3 cameras, obs_horizon frames of uint8 images -> one action chunk) two ways:
end to end through `predict_action` (image encoding, sampling, un-normalization) and the sampler alone
(`sample_actions`) on a precomputed condition (IMF: one head call per step; DDIM: the scheduler loop with the
head). Variants: IMF 1 and 2 steps, DDIM 10 and 100 steps; both heads get the same n_emb / n_layer /
n_head. Everything runs in one process, interleaved round-robin (the starting variant rotates every round),
so machine noise hits all variants alike; median and p90 over the timed rounds after warm-up.

    python benchmarks/inference_latency.py
    python benchmarks/inference_latency.py --n-emb 384 --n-layer 18 --n-head 1 --repeats 30
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_model_arguments,
    build_agent,
    describe_machine,
    parameter_millions,
    percentile,
    setup_runtime,
    synthetic_batch,
    timed_ms,
)

BASELINE = "DDIM-10"


class Variant:
    """One policy at one number of sampling steps; its two measurements share the agent and the observation."""

    def __init__(self, name: str, agent, steps: int, obs: dict, noise: torch.Tensor):
        self.name, self.agent, self.steps, self.obs, self.noise = name, agent, steps, obs, noise
        with torch.no_grad():
            self.cond = agent.encode_observation(obs["images"], obs["qpos"])  # (1, obs_horizon, cond_dim)
        self.times_ms = {"end_to_end": [], "head": []}

    def end_to_end(self) -> torch.Tensor:
        return self.agent.predict_action(self.obs, num_steps=self.steps)

    def head(self) -> torch.Tensor:
        return self.agent.sample_actions(self.cond, num_steps=self.steps, noise=self.noise)


def run_round_robin(variants: list[Variant], rounds: int, device: torch.device, record: bool) -> None:
    measurements = [(v, kind) for v in variants for kind in v.times_ms]
    for i in range(rounds):
        shift = i % len(measurements)
        for variant, kind in measurements[shift:] + measurements[:shift]:
            elapsed = timed_ms(getattr(variant, kind), device)
            if record:
                variant.times_ms[kind].append(elapsed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, n_emb=256, n_layer=8, n_head=4)
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (each times every variant once)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    args = parser.parse_args()
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats}: need at least 1 timed round (30 or more for a stable p90).")
    device = setup_runtime(args)

    imf = build_agent("imf", args, device).eval()
    ddpm = build_agent("ddpm", args, device).eval()
    obs = synthetic_batch(1, args, device)
    obs = {"images": obs["images"], "qpos": obs["qpos"]}
    noise = torch.randn(1, args.pred_horizon, imf.action_dim, device=device)
    variants = [
        Variant("IMF-1", imf, 1, obs, noise),
        Variant("IMF-2", imf, 2, obs, noise),
        Variant("DDIM-10", ddpm, 10, obs, noise),
        Variant("DDIM-100", ddpm, 100, obs, noise),
    ]

    print(f"machine: {describe_machine(device, args.threads)}")
    print(
        f"heads: n_emb {args.n_emb}, n_layer {args.n_layer}, n_head {args.n_head} (IMF n_kv_head {args.n_head}); "
        f"IMF head {parameter_millions(imf.noise_pred_net):.2f} M params, DDPM head "
        f"{parameter_millions(ddpm.noise_pred_net):.2f} M params, ResNet-18 x 3 backbone "
        f"{parameter_millions(imf.vision_backbone):.2f} M params"
    )
    print(
        f"query: batch 1, {len(obs['images'])} cameras x {args.obs_horizon} frames of {args.image_size}x"
        f"{args.image_size} uint8 -> ({args.pred_horizon}, {imf.action_dim}) actions; "
        f"{args.warmup} warm-up + {args.repeats} timed round-robin rounds"
    )
    start = time.perf_counter()
    run_round_robin(variants, args.warmup, device, record=False)
    run_round_robin(variants, args.repeats, device, record=True)
    print(f"measured in {time.perf_counter() - start:.0f} s\n")

    baseline = next(v for v in variants if v.name == BASELINE)
    baseline_head_ms = statistics.median(baseline.times_ms["head"])
    header = (
        f"{'policy':<9} {'NFE':>4} {'end-to-end median (ms)':>23} {'end-to-end p90 (ms)':>20} "
        f"{'head median (ms)':>17} {'head p90 (ms)':>14} {'head: x times faster than ' + BASELINE:>36}"
    )
    print(header)
    print("-" * len(header))
    for v in variants:
        e2e, head = v.times_ms["end_to_end"], v.times_ms["head"]
        print(
            f"{v.name:<9} {v.steps:>4} {statistics.median(e2e):>23.2f} {percentile(e2e, 90):>20.2f} "
            f"{statistics.median(head):>17.2f} {percentile(head, 90):>14.2f} "
            f"{baseline_head_ms / statistics.median(head):>36.2f}"
        )
    imf_one = next(v for v in variants if v.name == "IMF-1")
    print(f"IMF-1 vs DDIM-10 head latency ratio: {baseline_head_ms / statistics.median(imf_one.times_ms['head']):.2f}")


if __name__ == "__main__":
    main()
