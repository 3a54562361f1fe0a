"""AdamW parameter groups and the warmup + cosine learning-rate schedule of train_vla.py."""
import math

import torch
from torch import nn


def build_param_groups(agent: nn.Module, weight_decay: float) -> list[dict]:
    """The head's own decay/no-decay groups plus one group for every other trainable parameter.

    Frozen parameters are left out; every trainable parameter lands in exactly one group.
    """
    head = agent.noise_pred_net
    groups = []
    if hasattr(head, "get_optim_groups"):
        groups = [
            {**g, "params": [p for p in g["params"] if p.requires_grad]}
            for g in head.get_optim_groups(weight_decay=weight_decay)
        ]
    grouped = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in agent.parameters() if p.requires_grad and id(p) not in grouped]
    groups = [g for g in groups if g["params"]]
    if rest:
        groups.append({"params": rest, "weight_decay": weight_decay})

    trainable = [p for p in agent.parameters() if p.requires_grad]
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed)), "a parameter appears in more than one optimizer group"
    assert set(listed) == {id(p) for p in trainable}, "optimizer groups do not cover every trainable parameter"
    return groups


def build_optimizer(agent: nn.Module, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(build_param_groups(agent, weight_decay), lr=lr, betas=tuple(betas))


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, scheduler_type: str, lr: float, min_lr: float) -> float:
    """Multiplier of the peak LR at optimizer step `step`: linear warmup, then cosine to min_lr or constant."""
    if step < warmup_steps:
        return step / warmup_steps
    if scheduler_type == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    floor = min_lr / lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    if train_cfg.scheduler_type not in ("cosine", "constant"):
        raise ValueError(f"Unknown train.scheduler_type={train_cfg.scheduler_type!r}. Use 'cosine' or 'constant'.")

    def factor(step: int) -> float:
        return lr_factor(
            step,
            warmup_steps=train_cfg.warmup_steps,
            max_steps=train_cfg.max_steps,
            scheduler_type=train_cfg.scheduler_type,
            lr=train_cfg.lr,
            min_lr=train_cfg.min_lr,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
