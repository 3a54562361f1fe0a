"""What does the iMF objective (two head passes, one of them a JVP) cost per train step next to DDPM?

One train step = compute_loss + backward + gradient clipping + AdamW step, as in train_vla.py, on a synthetic
batch (default 8 samples, 3 cameras of 96x96 uint8 frames, obs_horizon 2, pred_horizon 16). Both heads get the
same n_emb / n_layer / n_head. The step is split, inside the real step, with hooks on the vision backbone:

* backbone: its forward, plus its backward from the moment the gradient reaches its output (autograd runs the
  later-created head ops first, so what follows is the backbone's own backward);
* head/objective: the rest of compute_loss and backward (for IMF: the v pass, the JVP and its backward);
* optimizer: zero_grad, gradient clipping and AdamW.

Each variant runs in a fresh spawned process, so its peak memory is its own: on CPU the ru_maxrss high-water
mark after the steps, and its growth over the mark taken after building the model (activations, gradients,
optimizer state); on CUDA torch.cuda.max_memory_allocated. Processes alternate DDPM, IMF, DDPM, IMF, ... for
--rounds rounds so slow spells of a shared machine hit both.

    python benchmarks/train_step_cost.py
    python benchmarks/train_step_cost.py --n-emb 384 --n-layer 18 --n-head 1   # the reference IMF head
"""

import argparse
import multiprocessing
import resource
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
    synchronize,
    synthetic_batch,
)
from roboimi.vla.training.optim import build_optimizer  # noqa: E402

VARIANTS = {"ddpm": "DDPM", "imf": "IMF (JVP)"}
PHASES = ("step", "backbone", "head/objective", "optimizer")


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class BackboneClock:
    """Timestamps of the backbone's forward and of the gradient arriving at its output, via hooks."""

    def __init__(self, backbone: torch.nn.Module, device: torch.device):
        self.device = device
        self.forward_start = self.forward_end = self.grad_arrived = None
        backbone.register_forward_pre_hook(self._on_forward_start)
        backbone.register_forward_hook(self._on_forward_end)

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def _on_forward_start(self, module, inputs):
        self.forward_start = self._now()

    def _on_forward_end(self, module, inputs, output):
        self.forward_end = self._now()
        output.register_hook(self._on_grad)  # output: (B, To, num_cams * feature_dim)

    def _on_grad(self, grad):
        self.grad_arrived = self._now()


def measure_variant(kind: str, args) -> dict:
    """Runs in a fresh process: warm-up and timed steps of one agent; per-phase times (ms) and peak memory."""
    device = setup_runtime(args)
    agent = build_agent(kind, args, device).train()
    optimizer = build_optimizer(agent, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-5)
    params = [p for p in agent.parameters() if p.requires_grad]
    batch = synthetic_batch(args.batch_size, args, device)
    clock = BackboneClock(agent.vision_backbone, device)
    rss_after_build_mb = max_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cuda_after_build_mb = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None

    times = {phase: [] for phase in PHASES}
    for i in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        loss = agent.compute_loss(batch)
        loss.backward()
        synchronize(device)
        optimizer_start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        end = time.perf_counter()
        if i < args.warmup:
            continue
        backbone = (clock.forward_end - clock.forward_start) + (optimizer_start - clock.grad_arrived)
        times["step"].append((end - start) * 1e3)
        times["backbone"].append(backbone * 1e3)
        times["head/objective"].append((optimizer_start - start - backbone) * 1e3)
        times["optimizer"].append((end - optimizer_start) * 1e3)
    result = {
        "times_ms": times,
        "head_params_m": parameter_millions(agent.noise_pred_net),
        "backbone_params_m": parameter_millions(agent.vision_backbone),
        "peak_rss_mb": max_rss_mb(),
        "step_rss_growth_mb": max_rss_mb() - rss_after_build_mb,
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["cuda_step_growth_mb"] = result["cuda_peak_mb"] - cuda_after_build_mb
    return result


def run_in_fresh_process(kind: str, args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_variant, (kind, args))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, n_emb=256, n_layer=8, n_head=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant, alternating DDPM and IMF")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        raise ValueError(f"--steps={args.steps}, --rounds={args.rounds}: both must be at least 1.")
    device = setup_runtime(args)

    results = {kind: [] for kind in VARIANTS}
    start = time.perf_counter()
    for _ in range(args.rounds):
        for kind in VARIANTS:
            results[kind].append(run_in_fresh_process(kind, args))
    elapsed = time.perf_counter() - start

    first = {kind: runs[0] for kind, runs in results.items()}
    print(f"machine: {describe_machine(device, args.threads)}")
    print(
        f"heads: n_emb {args.n_emb}, n_layer {args.n_layer}, n_head {args.n_head} (IMF n_kv_head {args.n_head}); "
        f"IMF head {first['imf']['head_params_m']:.2f} M params, DDPM head {first['ddpm']['head_params_m']:.2f} M "
        f"params, ResNet-18 x 3 backbone {first['imf']['backbone_params_m']:.2f} M params"
    )
    print(
        f"step: batch {args.batch_size}, 3 cameras x {args.obs_horizon} frames of {args.image_size}x{args.image_size}"
        f" uint8, pred_horizon {args.pred_horizon}; compute_loss + backward + clip + AdamW; {args.rounds} fresh "
        f"process(es) per variant x ({args.warmup} warm-up + {args.steps} timed steps); measured in {elapsed:.0f} s\n"
    )
    memory = "CUDA peak allocated (MB)" if device.type == "cuda" else "peak RSS (MB)"
    growth = "CUDA step growth (MB)" if device.type == "cuda" else "RSS step growth (MB)"
    header = (
        f"{'policy':<10} {'step median (ms)':>17} {'step p90 (ms)':>14} {'backbone (ms)':>14} "
        f"{'head/objective (ms)':>20} {'optimizer (ms)':>15} {memory:>24} {growth:>22} {'steps/hour':>11}"
    )
    print(header)
    print("-" * len(header))
    medians = {}
    for kind, runs in results.items():
        pooled = {phase: [t for run in runs for t in run["times_ms"][phase]] for phase in PHASES}
        medians[kind] = {phase: statistics.median(values) for phase, values in pooled.items()}
        peak_key, growth_key = ("cuda_peak_mb", "cuda_step_growth_mb") if device.type == "cuda" else (
            "peak_rss_mb", "step_rss_growth_mb")
        m = medians[kind]
        print(
            f"{VARIANTS[kind]:<10} {m['step']:>17.0f} {percentile(pooled['step'], 90):>14.0f} {m['backbone']:>14.0f} "
            f"{m['head/objective']:>20.0f} {m['optimizer']:>15.0f} "
            f"{max(run[peak_key] for run in runs):>24.0f} {max(run[growth_key] for run in runs):>22.0f} "
            f"{3.6e6 / m['step']:>11.0f}"
        )
    print(f"IMF/DDPM train step time ratio: {medians['imf']['step'] / medians['ddpm']['step']:.2f}")


if __name__ == "__main__":
    main()
