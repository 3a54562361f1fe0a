"""How much faster does the IMF policy act than the DDIM baseline at the same head size?

Times one rollout query (batch 1, 3 cameras, obs_horizon frames of uint8 images -> one action chunk) two ways:
end to end through `predict_action` (image encoding, sampling, un-normalization) and the sampler alone
(`sample_actions`) on a precomputed condition (IMF: one head call per step; DDIM: the scheduler loop with the
head). Variants: IMF 1 and 2 steps, DDIM 10 and 100 steps; both heads get the same n_emb / n_layer /
n_head. Everything runs in one process, interleaved round-robin (the starting variant rotates every round),
so machine noise hits all variants alike; median and p90 over the timed rounds after warm-up.

A second table times the eval fast paths of the vision encoders (roboimi.vla.fast_paths), each stage on copies of
both agents with the stages above it applied: as built, BatchNorm folded into the convs, channels-last, and with
--compile-encoder torch.compile of the encoders; then bf16 autocast on top (not exact, so reported apart). Per
stage: the encoders alone (encode_observation), IMF-1 and DDIM-10 end to end, and the largest action difference
from the as-built IMF-1 on the same noise; and a plan inside a rollout (`select_action` at a re-planning step), where
the agent encoded the older frame in the step before, so the plan encodes one frame per camera. The encoders alone are
also timed under torch.no_grad next to the torch.inference_mode that predict_action uses.

    python benchmarks/inference_latency.py
    python benchmarks/inference_latency.py --n-emb 384 --n-layer 18 --n-head 1 --repeats 30
    python benchmarks/inference_latency.py --compile-encoder   # adds the compiled stage (compiles for minutes)
"""

import argparse
import copy
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
from roboimi.evaluation.agent_policy import AgentPolicy  # noqa: E402
from roboimi.vla.fast_paths import (  # noqa: E402
    precision_autocast,
    compile_encoder,
    fuse_conv_batchnorm,
    use_channels_last,
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

    def timers(self) -> dict:
        return {"end_to_end": self.end_to_end, "head": self.head}


class Stage:
    """Copies of both agents with the encoder fast paths `transforms` applied (the head is shared, not copied)."""

    def __init__(self, name: str, imf, ddpm, transforms, obs: dict, noise: torch.Tensor, precision: str = "fp32"):
        self.name, self.obs, self.noise, self.precision = name, obs, noise, precision
        self.imf, self.ddpm = (copy.deepcopy(a, memo={id(a.noise_pred_net): a.noise_pred_net}) for a in (imf, ddpm))
        for transform in transforms:
            transform(self.imf)
            transform(self.ddpm)
        self.times_ms = {"encoder": [], "IMF-1": [], "DDIM-10": []}

    def encoder(self) -> torch.Tensor:
        with torch.inference_mode(), precision_autocast(self.precision, self.noise.device):
            return self.imf.encode_observation(self.obs["images"], self.obs["qpos"])

    def imf_one(self) -> torch.Tensor:
        with precision_autocast(self.precision, self.noise.device):
            return self.imf.predict_action(self.obs, num_steps=1, noise=self.noise)

    def ddim_ten(self) -> torch.Tensor:
        with precision_autocast(self.precision, self.noise.device):
            return self.ddpm.predict_action(self.obs, num_steps=10, noise=self.noise)

    def timers(self) -> dict:
        return {"encoder": self.encoder, "IMF-1": self.imf_one, "DDIM-10": self.ddim_ten}


class NoGradEncoder:
    """The as-built encoders under torch.no_grad, the context predict_action used before torch.inference_mode."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.times_ms = {"encoder": []}

    def encoder(self) -> torch.Tensor:
        with torch.no_grad():
            return self.stage.imf.encode_observation(self.stage.obs["images"], self.stage.obs["qpos"])

    def timers(self) -> dict:
        return {"encoder": self.encoder}


class RolloutPlan:
    """The latency of a plan inside a rollout: `select_action` at a re-planning step of the stage's agents, whose
    older frames were encoded in the steps before, as a rollout does. The steps between two plans run untimed."""

    def __init__(self, stage: Stage, obs: dict):
        # One env observation: the newest frame of each camera (H, W, 3) and the state (14,).
        self.env_obs = {
            "images": {cam: frames[0, -1].permute(1, 2, 0).cpu().numpy() for cam, frames in obs["images"].items()},
            "qpos": obs["qpos"][0, -1].cpu().numpy(),
        }
        # The rollout-side policies, inside the stage's autocast as the evaluator runs them.
        self.policies = {
            kind: AgentPolicy(agent, precision=stage.precision)
            for kind, agent in (("IMF-1 plan", stage.imf), ("DDIM-10 plan", stage.ddpm))
        }
        for policy in self.policies.values():
            policy.reset()
        self.planned = set()  # the kinds whose agent has planned once: it plans again num_action_steps calls later
        self.times_ms = {kind: [] for kind in self.policies}

    def prepare(self, kind: str) -> None:
        """Step the agent until its next call plans (a fresh agent plans at its first call)."""
        policy = self.policies[kind]
        if kind in self.planned:
            for _ in range(policy.agent.num_action_steps - 1):
                policy.select_action(self.env_obs)
        self.planned.add(kind)

    def timers(self) -> dict:
        return {kind: lambda policy=policy: policy.select_action(self.env_obs) for kind, policy in self.policies.items()}


def run_round_robin(measured: list, rounds: int, device: torch.device, record: bool) -> None:
    """`measured`: objects with `times_ms` {kind: list} and `timers()` {kind: fn}, all timed once per round; an
    object's `prepare(kind)`, where it has one, runs untimed before each timing."""
    measurements = [(m, kind, fn) for m in measured for kind, fn in m.timers().items()]
    for i in range(rounds):
        shift = i % len(measurements)
        for owner, kind, fn in measurements[shift:] + measurements[:shift]:
            if hasattr(owner, "prepare"):
                owner.prepare(kind)
            elapsed = timed_ms(fn, device)
            if record:
                owner.times_ms[kind].append(elapsed)


def build_stages(imf, ddpm, obs: dict, noise: torch.Tensor, compile_encoders: bool) -> list[Stage]:
    exact = [("as built", []), ("+ fused conv-BN", [fuse_conv_batchnorm]), ("+ channels-last", [use_channels_last])]
    if compile_encoders:
        exact.append(("+ compiled encoder", [compile_encoder]))
    stages, transforms = [], []
    for name, added in exact:
        transforms = transforms + added
        stages.append(Stage(name, imf, ddpm, transforms, obs, noise))
    stages.append(Stage(f"{stages[-1].name}, bf16 autocast", imf, ddpm, transforms, obs, noise, precision="bf16"))
    return stages


def print_stages(stages: list[Stage], no_grad: NoGradEncoder, plans: list[RolloutPlan]) -> None:
    """End to end from a full observation batch (predict_action), and a plan inside a rollout (select_action),
    where the older frame was encoded in the step before."""
    reference = stages[0].imf_one()
    header = (
        f"{'encoder fast paths (cumulative)':<44} {'encoders (ms)':>14} {'IMF-1 e2e (ms)':>15} "
        f"{'DDIM-10 e2e (ms)':>17} {'e2e DDIM-10 / IMF-1':>20} {'IMF-1 plan (ms)':>16} {'DDIM-10 plan (ms)':>18} "
        f"{'plan DDIM-10 / IMF-1':>21} {'max |action diff|':>18}"
    )
    print(header)
    print("-" * len(header))
    print(f"{'as built, torch.no_grad':<44} {statistics.median(no_grad.times_ms['encoder']):>14.2f}")
    for stage, plan in zip(stages, plans):
        m = {kind: statistics.median(times) for kind, times in {**stage.times_ms, **plan.times_ms}.items()}
        diff = (stage.imf_one().float() - reference).abs().max().item()
        print(
            f"{stage.name:<44} {m['encoder']:>14.2f} {m['IMF-1']:>15.2f} {m['DDIM-10']:>17.2f} "
            f"{m['DDIM-10'] / m['IMF-1']:>20.2f} {m['IMF-1 plan']:>16.2f} {m['DDIM-10 plan']:>18.2f} "
            f"{m['DDIM-10 plan'] / m['IMF-1 plan']:>21.2f} {diff:>18.2e}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, n_emb=256, n_layer=8, n_head=4)
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (each times every variant once)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--compile-encoder", action="store_true", help="add the torch.compile stage of the encoders (compiles first)"
    )
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
    stages = build_stages(imf, ddpm, obs, noise, args.compile_encoder)
    no_grad = NoGradEncoder(stages[0])
    plans = [RolloutPlan(stage, obs) for stage in stages]

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
    run_round_robin([*variants, *stages, no_grad, *plans], args.warmup, device, record=False)
    run_round_robin([*variants, *stages, no_grad, *plans], args.repeats, device, record=True)
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
    print()
    print_stages(stages, no_grad, plans)


if __name__ == "__main__":
    main()
