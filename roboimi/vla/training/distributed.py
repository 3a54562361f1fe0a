"""Data-parallel training on torch.distributed: process group from the torchrun environment, and checks.

Launch with `torchrun --nproc_per_node=N roboimi/demos/vla_scripts/train_vla.py ...`; a plain `python` launch is
a world of one process and uses none of this machinery.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from roboimi.vla.training.runtime import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average of a tensor over ranks (every rank gets the same result)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def gather_objects(self, obj) -> list:
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(requested_device: str) -> DistributedContext:
    """Join the process group described by torchrun's RANK / LOCAL_RANK / WORLD_SIZE (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


class AgentLoss(nn.Module):
    """`forward(batch) -> agent.compute_loss(batch)`, so DistributedDataParallel can wrap the training objective.

    Going through DDP's forward is what arms its gradient all-reduce; the iMF JVP inside compute_loss runs on the
    plain head module, which torch.func can trace (it cannot trace a DDP wrapper).
    """

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.agent = agent

    def forward(self, batch: dict) -> torch.Tensor:
        return self.agent.compute_loss(batch)


def parameter_fingerprint(params: list[torch.Tensor]) -> tuple[float, float]:
    """(sum, sum of squares) in float64: equal across ranks iff the replicas agree, up to summation order."""
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in params])
    return flat.sum().item(), flat.square().sum().item()


def assert_ranks_agree(ctx: DistributedContext, what: str, value, step: int) -> None:
    """Raise on every rank if `value` differs between ranks (used for gradient norms and parameter fingerprints)."""
    values = ctx.gather_objects(value)
    if any(v != values[0] for v in values[1:]):
        raise RuntimeError(
            f"DDP replicas diverged at step {step}: {what} per rank = {values}. Gradients were not averaged across "
            f"ranks; make sure the loss is computed through the DistributedDataParallel wrapper."
        )
