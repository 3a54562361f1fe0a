"""Exponential moving average (EMA) of an agent's weights, the copy that rollouts and evaluation use.

torch.optim.swa_utils.AveragedModel keeps the averaged copy; the decay warms up as in diffusion_policy:
decay_n = min(max_decay, 1 - (1 + n)^-power) at the n-th update (n = 1, 2, ...; update 0 copies the weights), so
early averages forget the random initialisation quickly and late ones average over ~1 / (1 - decay) steps.
Buffers (normalization stats, BatchNorm running statistics) are copied from the live agent, not averaged.
"""
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_decay(num_updates: int, power: float, max_decay: float) -> float:
    """The decay applied at update `num_updates` (>= 1)."""
    return min(max_decay, 1.0 - (1.0 + num_updates) ** -power)


def build_ema(agent: nn.Module, power: float = 0.75, max_decay: float = 0.9999) -> AveragedModel:
    """An AveragedModel of `agent`; call `.update_parameters(agent)` after every optimizer step."""
    if not 0.0 < power:
        raise ValueError(f"train.ema_power={power} must be > 0 (diffusion_policy uses 0.75).")
    if not 0.0 <= max_decay < 1.0:
        raise ValueError(f"train.ema_max_decay={max_decay} must lie in [0, 1) (diffusion_policy uses 0.9999).")

    def warmup_ema(ema_params, current_params, num_averaged: torch.Tensor) -> None:
        decay = ema_decay(int(num_averaged), power, max_decay)
        get_ema_multi_avg_fn(decay)(ema_params, current_params, num_averaged)

    ema = AveragedModel(agent, multi_avg_fn=warmup_ema, use_buffers=False)
    ema.requires_grad_(False)
    return ema
