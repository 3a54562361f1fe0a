"""Temporal ensembling of overlapping action chunks, as in ACT: re-plan at every step and act with a weighted mean
of what every earlier chunk predicted for the current step.

Successive chunks overlap in H - 1 steps; averaging them smooths the hand-over from one chunk to the next and
averages out the sampling noise of a stochastic head, which is what precise contact phases need.
"""
import torch


class TemporalEnsembler:
    """Running weighted mean of the predictions for each of the next `horizon` steps.

    A chunk predicted at step s covers steps s .. s + horizon - 1. The i-th prediction made for a step (i = 0 the
    oldest) weighs exp(-coeff * i): coeff > 0 favours older predictions (ACT uses 0.01), 0 is a plain mean and
    coeff < 0 favours the newest.
    """

    def __init__(self, coeff: float, horizon: int):
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1: the chunk must cover the current step.")
        self.coeff = float(coeff)
        self.horizon = horizon
        self.reset()

    def reset(self) -> None:
        self.weighted_sum = None  # (horizon, A): sum over predictions of weight * action, per future step
        self.weight_sum = None  # (horizon,)
        self.count = None  # (horizon,): predictions made so far for each future step

    def update(self, chunk: torch.Tensor) -> torch.Tensor:
        """chunk (horizon, A) predicted at this step -> the ensembled action (A,) for this step; moves one step on."""
        if chunk.shape[0] != self.horizon:
            raise ValueError(f"chunk has {chunk.shape[0]} steps; the ensembler was built for horizon={self.horizon}.")
        if self.weighted_sum is None:
            self.weighted_sum = torch.zeros_like(chunk)
            self.weight_sum = chunk.new_zeros(self.horizon)
            self.count = chunk.new_zeros(self.horizon)
        weight = torch.exp(-self.coeff * self.count)  # (horizon,)
        self.weighted_sum += weight[:, None] * chunk
        self.weight_sum += weight
        self.count += 1
        action = self.weighted_sum[0] / self.weight_sum[0]
        # The next step's window: drop the current step, open an empty slot at the far end.
        self.weighted_sum = torch.cat([self.weighted_sum[1:], torch.zeros_like(chunk[:1])])
        self.weight_sum = torch.cat([self.weight_sum[1:], self.weight_sum.new_zeros(1)])
        self.count = torch.cat([self.count[1:], self.count.new_zeros(1)])
        return action
