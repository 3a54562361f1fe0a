"""Exponential moving average (EMA) of an agent's weights, the copy that rollouts and evaluation use.

The decay warms up as in diffusion_policy: decay_n = min(max_decay, 1 - (1 + n)^-power) at the n-th update
(n = 1, 2, ...; update 0 copies the weights), so early averages forget the random initialisation quickly and late
ones average over ~1 / (1 - decay) steps. Buffers (normalization stats, BatchNorm running statistics) are copied
from the live agent, not averaged. The update count lives on the host, so an update never waits for the GPU
(torch.optim.swa_utils.AveragedModel keeps it in a tensor that it reads back at every update).
"""
import copy

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


def ema_decay(num_updates: int, power: float, max_decay: float) -> float:
    """The decay applied at update `num_updates` (>= 1)."""
    return min(max_decay, 1.0 - (1.0 + num_updates) ** -power)


class WarmupEMA(nn.Module):
    """`module`: a frozen copy of the agent holding the averaged weights; `n_averaged`: updates so far."""

    def __init__(self, agent: nn.Module, power: float, max_decay: float):
        super().__init__()
        self.module = copy.deepcopy(agent).requires_grad_(False)
        self.power, self.max_decay = power, max_decay
        self.n_averaged = 0

    @torch.no_grad()
    def update_parameters(self, agent: nn.Module) -> None:
        """Fold the agent's current weights in; call after every optimizer step."""
        averaged, live = list(self.module.parameters()), [p.detach() for p in agent.parameters()]
        if self.n_averaged == 0:
            for ema_param, param in zip(averaged, live):
                ema_param.copy_(param)
        else:
            decay = ema_decay(self.n_averaged, self.power, self.max_decay)
            get_ema_multi_avg_fn(decay)(averaged, live, None)
        for ema_buffer, buffer in zip(self.module.buffers(), agent.buffers()):
            ema_buffer.copy_(buffer)
        self.n_averaged += 1


def build_ema(agent: nn.Module, power: float = 0.75, max_decay: float = 0.9999) -> WarmupEMA:
    """The EMA of `agent`; call `.update_parameters(agent)` after every optimizer step."""
    if not 0.0 < power:
        raise ValueError(f"train.ema_power={power} must be > 0 (diffusion_policy uses 0.75).")
    if not 0.0 <= max_decay < 1.0:
        raise ValueError(f"train.ema_max_decay={max_decay} must lie in [0, 1) (diffusion_policy uses 0.9999).")
    return WarmupEMA(agent, power, max_decay)
