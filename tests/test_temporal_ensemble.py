"""TemporalEnsembler: the running weighted mean equals ACT's formula computed from every chunk kept in full."""
import math
import unittest

import torch

from roboimi.vla.temporal_ensemble import TemporalEnsembler


def explicit_ensemble(chunks: list[torch.Tensor], step: int, coeff: float) -> torch.Tensor:
    """The action for `step` from chunks[s] (predicted at step s, covering s .. s + H - 1), oldest weighing most."""
    horizon = chunks[0].shape[0]
    predictions = [chunks[s][step - s] for s in range(max(0, step - horizon + 1), step + 1)]  # oldest first
    weights = [math.exp(-coeff * i) for i in range(len(predictions))]
    return sum(w * p for w, p in zip(weights, predictions)) / sum(weights)


class TemporalEnsemblerTest(unittest.TestCase):
    def test_matches_the_explicit_weighted_mean_for_every_step(self):
        horizon, steps = 5, 12
        chunks = [torch.randn(horizon, 3, generator=torch.Generator().manual_seed(s)) for s in range(steps)]
        for coeff in (0.01, 0.0, 0.5, -0.3):
            ensembler = TemporalEnsembler(coeff, horizon)
            for step in range(steps):
                torch.testing.assert_close(ensembler.update(chunks[step]), explicit_ensemble(chunks, step, coeff))

    def test_first_step_returns_the_chunk_and_reset_forgets_the_past(self):
        ensembler = TemporalEnsembler(0.01, 4)
        first, second = torch.ones(4, 2), torch.full((4, 2), 3.0)
        torch.testing.assert_close(ensembler.update(first), first[0])
        self.assertFalse(torch.equal(ensembler.update(second), second[0]))  # averaged with the first chunk
        ensembler.reset()
        torch.testing.assert_close(ensembler.update(second), second[0])

    def test_wrong_chunk_length_is_named(self):
        with self.assertRaisesRegex(ValueError, "horizon=4"):
            TemporalEnsembler(0.01, 4).update(torch.zeros(3, 2))
        with self.assertRaisesRegex(ValueError, "horizon=0"):
            TemporalEnsembler(0.01, 0)


if __name__ == "__main__":
    unittest.main()
