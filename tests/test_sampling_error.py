"""benchmarks/sampling_error.py: error, spread over noise draws and bias of sampled chunks; swapped inputs."""
import unittest

import torch

from tests.script_modules import load_script

sampling_error = load_script("benchmarks/sampling_error.py")
chunk_errors = sampling_error.chunk_errors


class ChunkErrorsTest(unittest.TestCase):
    def test_a_constant_offset_is_bias_and_independent_noise_is_spread(self):
        generator = torch.Generator().manual_seed(0)
        target = torch.randn(64, 8, 3, generator=generator)
        noise = 0.3 * torch.randn(4000, 64, 8, 3, generator=generator)
        chunks = target + 0.1 + noise
        keep = torch.ones(64, 8, dtype=torch.bool)
        errors = chunk_errors(chunks, target, keep)
        self.assertAlmostEqual(errors["bias"], 0.1, delta=0.01)
        self.assertAlmostEqual(errors["spread"], 0.3, delta=0.01)
        self.assertAlmostEqual(errors["error"] ** 2, errors["bias"] ** 2 + errors["spread"] ** 2, delta=0.003)

    def test_only_kept_steps_count(self):
        target = torch.zeros(2, 4, 1)
        chunks = torch.zeros(3, 2, 4, 1)
        chunks[:, :, 3] = 5.0  # a padded step's error must not enter
        keep = torch.tensor([[True, True, True, False]] * 2)
        self.assertEqual(chunk_errors(chunks, target, keep), {"error": 0.0, "spread": 0.0, "bias": 0.0})


if __name__ == "__main__":
    unittest.main()


class SwappedObservationTest(unittest.TestCase):
    def test_only_the_named_input_comes_from_another_window(self):
        batch = {"images": {"top": torch.arange(3).view(3, 1, 1, 1, 1).expand(3, 2, 3, 4, 4)},
                 "qpos": torch.arange(3.0).view(3, 1, 1).expand(3, 2, 5)}
        for swap, frames_from, state_from in (("none", [0, 1, 2], [0, 1, 2]), ("frames", [2, 0, 1], [0, 1, 2]),
                                              ("state", [0, 1, 2], [2, 0, 1])):
            with self.subTest(swap=swap):
                images, qpos = sampling_error.swapped_observation(batch, swap)
                self.assertEqual(images["top"][:, 0, 0, 0, 0].tolist(), frames_from)
                self.assertEqual(qpos[:, 0, 0].tolist(), state_from)
