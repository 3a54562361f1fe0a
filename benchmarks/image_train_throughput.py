"""Training throughput of an image recipe (samples/s), before and after the exact fast paths.

Each variant builds the real Trainer from the recipe's config on a recorded dataset and times the real loop body,
DataLoader batch + `Trainer.train_step`, for --steps steps after --warmup steps. Variants run in fresh spawned
processes, alternating for --rounds rounds so slow spells of a shared machine hit all of them; the median per
variant is reported. The variants compute the same step: each prints its first step's loss, which must agree
(channels-last reorders float sums, so within rounding). The data-parallel variant is the exception: its two
processes (gloo, one thread and half the batch each) train on the same 64 samples as one process
(DistributedSampler deals the shuffled batch out alternately) and average their gradients, but each draws its own
noise and times, so its first loss is another draw of the same objective.

    python benchmarks/image_train_throughput.py --dataset-dir data/sim_transfer_3cam_120 --cameras r_vis top front
"""

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402

from benchmarks.common import describe_machine  # noqa: E402
from roboimi.vla import CONFIG_DIR  # noqa: E402
from roboimi.vla.training.trainer import Trainer  # noqa: E402

# name -> (overrides on top of the recipe, torch threads per process, processes): frames read from disk per sample
# (the old path), decoded once into memory, decoded once with channels-last convolutions, with compiled passes (the
# first warm-up step compiles), with both cores for the one run as two threads of one process or as two
# data-parallel processes of one thread (torchrun's setup, gloo; half the batch each, so the same global batch), and
# in bf16 autocast (not the same step: its loss differs by rounding).
PRELOAD = ["data.preload_images=true", "train.channels_last=false"]
VARIANTS = {
    "disk": (["data.preload_images=false", "train.channels_last=false"], 1, 1),
    "preload": (PRELOAD, 1, 1),
    "preload+channels_last": (["data.preload_images=true", "train.channels_last=true"], 1, 1),
    "preload+compile": ([*PRELOAD, "train.compile=true"], 1, 1),
    "preload+2_threads": (PRELOAD, 2, 1),
    "preload+compile+2_threads": ([*PRELOAD, "train.compile=true"], 2, 1),
    "preload+2_processes": (PRELOAD, 1, 2),
    "preload+bf16": ([*PRELOAD, "train.precision=bf16"], 1, 1),
}


def measure_rank(rank: int, world_size: int, port: int, overrides: list[str], threads: int, warmup: int, steps: int,
                 results) -> None:
    """One process of a variant: put {samples_per_s, step_s, first_loss} of the whole (global) batch on `results`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Path(run_dir) / f"rank_{rank}")
        batches = iter(trainer.train_loader)
        first_loss = None
        for step in range(warmup + steps):
            if step == warmup:
                start = time.perf_counter()
            loss, _ = trainer.train_step(next(batches))
            first_loss = loss.item() if first_loss is None else first_loss
        seconds = time.perf_counter() - start
        samples_per_step = trainer.global_batch_size
        trainer.finish()
    if rank == 0:
        results.put({"samples_per_s": steps * samples_per_step / seconds, "step_s": seconds / steps, "first_loss": first_loss})


def measure(context, overrides: list[str], threads: int, processes: int, warmup: int, steps: int) -> dict:
    """Run one variant in `processes` fresh processes (a process group of that size when > 1); rank 0's numbers."""
    with socket.socket() as probe:  # a free port for the process group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = context.Queue()
    workers = [
        context.Process(target=measure_rank, args=(rank, processes, port, overrides, threads, warmup, steps, results))
        for rank in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:  # the result is a few numbers: it fits the queue's pipe, so joining first cannot block
        worker.join()
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError(f"a benchmark process failed (exit codes {[worker.exitcode for worker in workers]}); see above")
    return results.get(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--agent", default="image_imf_attnres")
    parser.add_argument("--data", default="sim_transfer")
    parser.add_argument("--train", default="image_cpu")
    parser.add_argument("--cameras", nargs="+", default=["r_vis", "top", "front"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch (the image presets' 64)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compiling, DDP's first sync checks)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    recipe = [
        f"agent={args.agent}", f"data={args.data}", f"train={args.train}", f"data.dataset_dir={args.dataset_dir}",
        f"data.camera_names=[{','.join(args.cameras)}]", "train.rollout_val_freq_epochs=0", "train.device=cpu",
        f"train.batch_size={args.batch_size}",
    ]
    print(f"{args.agent} / {args.train} on {args.dataset_dir}, cameras {args.cameras}; "
          f"{describe_machine(torch.device('cpu'), 1)}; {args.rounds} rounds of {args.steps} steps")
    context = multiprocessing.get_context("spawn")
    results = {name: [] for name in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            overrides, threads, processes = VARIANTS[name]
            if processes > 1:  # the same global batch, dealt out over the processes
                overrides = [*overrides, f"train.batch_size={args.batch_size // processes}"]
            result = measure(context, recipe + overrides, threads, processes, args.warmup, args.steps)
            results[name].append(result)
            print(f"  {name:<26} {result['samples_per_s']:6.1f} samples/s  first loss {result['first_loss']:.6f}")
    base = statistics.median(r["samples_per_s"] for r in results[args.variants[0]])
    summary = {}
    print(f"\n| variant | samples/s (median) | step (s) | vs {args.variants[0]} |\n|---|---|---|---|")
    for name, runs in results.items():
        rate = statistics.median(r["samples_per_s"] for r in runs)
        summary[name] = {"samples_per_s": rate, "runs": runs}
        print(f"| {name} | {rate:.1f} | {statistics.median(r['step_s'] for r in runs):.3f} | {rate / base:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
