"""Which inputs a trained policy's loss depends on: the loss on recorded batches with one input shuffled across
the batch (each camera's frames in turn, then the joint state), against the loss with nothing shuffled.

A shuffled input keeps its distribution but loses its link to the sample's actions, so the loss increase measures
how much the policy reads from it (permutation importance). Eval mode, the same noise draws for every variant.

    python benchmarks/input_importance.py --checkpoint runs/<run>/checkpoints/last.pt --batches 3
"""

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import trained_agent_batches  # noqa: E402


def shuffled(batch: dict, name: str, order: torch.Tensor) -> dict:
    """`batch` with camera `name`'s frames, or the state for name 'qpos', in `order`."""
    if name == "qpos":
        return {**batch, "qpos": batch["qpos"][order]}
    return {**batch, "images": {**batch["images"], name: batch["images"][name][order]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset-dir", help="default: the checkpoint's data.dataset_dir")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)

    agent, cfg, _, batches = trained_agent_batches(args.checkpoint, args.dataset_dir, args.batch_size, args.batches)
    inputs = ["nothing", *cfg.data.camera_names, "qpos"]
    losses = {name: 0.0 for name in inputs}
    for index, batch in enumerate(batches):
        order = torch.randperm(len(batch["qpos"]), generator=torch.Generator().manual_seed(index))
        for name in inputs:
            torch.manual_seed(index)  # the same noise draws for every variant
            with torch.no_grad():
                loss = agent.compute_loss(batch if name == "nothing" else shuffled(batch, name, order))
            losses[name] += loss.item() / args.batches
    print(f"{args.checkpoint}: loss with one input shuffled across the batch ({args.batches} x {args.batch_size} samples)")
    for name, loss in losses.items():
        print(f"  {name:<8} {loss:.6f}  ({loss / losses['nothing']:.1f}x)")
    print(json.dumps(losses))


if __name__ == "__main__":
    main()
