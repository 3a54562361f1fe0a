"""How far bf16 autocast moves the iMF training signal from fp32, piece by piece, on a recorded batch.

Takes a trained checkpoint (where the residuals are small, which is where rounding matters) and one batch of its
dataset, and reports the relative error against fp32 of: u from the head, du/dt from the JVP computed in bf16 and
in fp32 (inside an autocast step), and the loss and the gradient of a whole step under `train.precision=bf16` with
each `agent.derivative_precision` (the v pass and the JVP in fp32, or in the step's bf16).
du/dt is also computed as `agent.derivative_precision=fp32` does it: v pass and JVP in fp32 on the condition
from the bf16 encoder. The error of a gradient is |g_bf16 - g_fp32| / |g_fp32| over all parameters, with its cosine.

    python benchmarks/bf16_error.py --checkpoint runs/<run>/checkpoints/last.pt --batches 4
"""

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import describe_machine, trained_agent_batches  # noqa: E402
from roboimi.vla.agent_imf import DERIVATIVE_PRECISIONS  # noqa: E402
from roboimi.vla.fast_paths import precision_autocast  # noqa: E402

CPU = torch.device("cpu")


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference).norm() / reference.norm()).item()


def seeded_loss_and_grads(agent, batch, precision: str, seed: int):
    torch.manual_seed(seed)
    with precision_autocast(precision, CPU):
        loss = agent.compute_loss(batch)
    grads = torch.autograd.grad(loss, [p for p in agent.parameters() if p.requires_grad])
    return loss.detach(), torch.cat([g.reshape(-1) for g in grads])


def measure_batch(agent, batch, seed: int) -> dict:
    """Relative errors of one batch's u, du/dt (bf16 and fp32 JVP), loss and gradient against fp32."""
    x = agent.normalize_action(batch["action"].float())
    with torch.no_grad():
        cond = agent.encode_observation(batch["images"], batch["qpos"])
        with precision_autocast("bf16", CPU):
            cond_bf16 = agent.encode_observation(batch["images"], batch["qpos"]).float()
    generator = torch.Generator().manual_seed(seed)
    e = torch.randn(x.shape, generator=generator)
    t = torch.rand(x.shape[0], generator=generator).clamp(0.05, 1.0)
    r = t * torch.rand(x.shape[0], generator=generator)
    z = (1 - t[:, None, None]) * x + t[:, None, None] * e
    with torch.no_grad():
        u = agent.average_velocity(z, r, t, cond)
        v = agent.average_velocity(z, t, t, cond)
        with precision_autocast("bf16", CPU):
            u_bf16 = agent.average_velocity(z, r, t, cond)
            v_bf16 = agent.average_velocity(z, t, t, cond)
    du_dt = agent.time_derivative(z, r, t, v, cond)
    with precision_autocast("bf16", CPU):  # the JVP inside a bf16 step, in bf16
        du_dt_bf16 = agent.time_derivative(z, r, t, v_bf16.float(), cond)
    du_dt_fp32_jvp = agent.time_derivative(z, r, t, v_bf16.float(), cond)  # the same, JVP in fp32
    with torch.no_grad():  # derivative_precision=fp32: v pass and JVP in fp32 on the bf16 encoder's condition
        v_fp32 = agent.average_velocity(z, t, t, cond_bf16)
    du_dt_fp32_passes = agent.time_derivative(z, r, t, v_fp32, cond_bf16)
    loss, grads = seeded_loss_and_grads(agent, batch, "fp32", seed)
    row = {
        "u": relative_error(u_bf16, u),
        "du_dt_bf16_jvp": relative_error(du_dt_bf16, du_dt),
        "du_dt_fp32_jvp": relative_error(du_dt_fp32_jvp, du_dt),
        "du_dt_fp32_passes": relative_error(du_dt_fp32_passes, du_dt),
        "loss_fp32": loss.item(),
    }
    for derivative_precision in DERIVATIVE_PRECISIONS:  # a whole bf16 step, with v pass and JVP in fp32 or in bf16
        agent.derivative_precision = derivative_precision
        loss_bf16, grads_bf16 = seeded_loss_and_grads(agent, batch, "bf16", seed)
        row[f"loss[{derivative_precision}]"] = relative_error(loss_bf16, loss)
        row[f"grad[{derivative_precision}]"] = relative_error(grads_bf16, grads)
        row[f"grad_cosine[{derivative_precision}]"] = torch.nn.functional.cosine_similarity(grads_bf16, grads, dim=0).item()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint or policy.pt of an iMF agent")
    parser.add_argument("--dataset-dir", help="default: the checkpoint's data.dataset_dir")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # Eval mode: dropout off, so both precisions see the same network.
    agent, _, weights, batches = trained_agent_batches(args.checkpoint, args.dataset_dir, args.batch_size, args.batches)
    rows = []
    for index, batch in enumerate(batches):
        rows.append(measure_batch(agent, batch, seed=index))
        print(json.dumps({"batch": index, **{k: round(v, 6) for k, v in rows[-1].items()}}), flush=True)
    summary = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
    result = {"machine": describe_machine(CPU, args.threads), "checkpoint": args.checkpoint, "weights": weights, "mean": summary}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
