"""Fast-path switches: attention kernel choice, bf16 autocast, compiled head."""
import unittest

import pytest
import torch
import torch.nn.functional as F

from roboimi.vla.fast_paths import attention_backends, bf16_autocast, compile_head
from roboimi.vla.models.heads.imf_transformer1d import IMFTransformer1D

CPU = torch.device("cpu")


def attention_jvp():
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    return torch.func.jvp(lambda q_: F.scaled_dot_product_attention(q_, k, v), (q,), (torch.ones_like(q),))


class AttentionBackendsTest(unittest.TestCase):
    def test_fused_kernel_is_used_unless_pinned_to_math(self):
        # The fused CPU kernel has no forward-mode derivative, which makes the kernel choice observable.
        with attention_backends(True, CPU), self.assertRaisesRegex(NotImplementedError, "forward AD"):
            attention_jvp()
        for setting in (False, "auto"):
            with attention_backends(setting, CPU):
                out, tangent = attention_jvp()
            self.assertTrue(torch.isfinite(tangent).all(), setting)

    def test_unknown_setting(self):
        with self.assertRaisesRegex(ValueError, "use true, false or auto"):
            attention_backends("fast", CPU)


class AgentHeadFastPathsTest(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.head = IMFTransformer1D(14, 14, horizon=8, n_obs_steps=2, cond_dim=20, n_layer=1, n_head=2, n_kv_head=2, n_emb=32).eval()
        self.inputs = (torch.randn(2, 8, 14), torch.zeros(2), torch.ones(2), torch.randn(2, 2, 20))

    def test_bf16_autocast_stays_close_to_fp32(self):
        reference = self.head(*self.inputs)
        with bf16_autocast(True, CPU):
            fast = self.head(*self.inputs)
        self.assertEqual(fast.dtype, torch.bfloat16)
        torch.testing.assert_close(fast.float(), reference, atol=0.05, rtol=0.05)
        with bf16_autocast(False, CPU):
            self.assertEqual(self.head(*self.inputs).dtype, torch.float32)

    @pytest.mark.slow
    def test_compiled_head_keeps_keys_and_outputs(self):
        class Holder:
            noise_pred_net = self.head

        keys = list(self.head.state_dict())
        reference = self.head(*self.inputs)
        compile_head(Holder)
        self.assertEqual(list(self.head.state_dict()), keys)
        torch.testing.assert_close(self.head(*self.inputs), reference, atol=1e-5, rtol=1e-5)


if __name__ == "__main__":
    unittest.main()
