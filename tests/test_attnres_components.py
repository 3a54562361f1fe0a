"""AttnRes transformer components: norms, RoPE, grouped-query attention, SwiGLU, depth mixing, backbone."""
import math
import unittest

import torch

from roboimi.vla.models.heads.attnres_transformer_components import (
    AttnResOperator,
    AttnResSubLayer,
    AttnResTransformerBackbone,
    GroupedQuerySelfAttention,
    RMSNorm,
    RMSNormNoWeight,
    SwiGLUFFN,
    apply_rope,
    precompute_rope_freqs,
)

torch.set_num_threads(1)


def explicit_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v for (B, H, T, d) tensors."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1) @ v


class RMSNormTest(unittest.TestCase):
    def test_rmsnorm_divides_by_root_mean_square_then_applies_gain(self):
        norm = RMSNorm(2, eps=0.0)
        with torch.no_grad():
            norm.weight.copy_(torch.tensor([2.0, 0.5]))
        out = norm(torch.tensor([[3.0, 4.0]]))
        rms = math.sqrt((9 + 16) / 2)
        torch.testing.assert_close(out, torch.tensor([[2 * 3 / rms, 0.5 * 4 / rms]]))

    def test_rmsnorm_starts_with_unit_gain(self):
        self.assertTrue(torch.equal(RMSNorm(5).weight, torch.ones(5)))

    def test_half_precision_input_is_cast_back_before_the_gain(self):
        norm = RMSNorm(4)
        with torch.no_grad():
            norm.weight.copy_(torch.tensor([1.1, 0.7, 1.3, 0.9]))
        x = torch.randn(3, 4).to(torch.bfloat16)
        x32 = x.float()
        normalized = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
        expected = normalized.to(torch.bfloat16) * norm.weight  # bf16 rounding happens before the gain
        out = norm(x)
        self.assertEqual(out.dtype, torch.float32)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)

    def test_weightless_norm_has_no_state_and_normalises(self):
        norm = RMSNormNoWeight(eps=0.0)
        self.assertEqual(len(list(norm.parameters())), 0)
        self.assertEqual(len(list(norm.buffers())), 0)
        self.assertEqual(norm.state_dict(), {})
        x = torch.tensor([[3.0, -3.0, 3.0, 3.0], [2.0, 0.0, 0.0, 0.0], [1.0, -1.0, 3.0, 3.0]])
        root5 = math.sqrt(5.0)  # rms of the last row: sqrt((1 + 1 + 9 + 9) / 4)
        expected = torch.tensor([[1.0, -1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0], [1 / root5, -1 / root5, 3 / root5, 3 / root5]])
        torch.testing.assert_close(norm(x), expected)


class RopeTest(unittest.TestCase):
    def test_odd_dimension_is_rejected(self):
        with self.assertRaisesRegex(ValueError, r'^RoPE requires an even head dimension, got 5\.$'):
            precompute_rope_freqs(5, 8)

    def test_frequency_table_layout(self):
        freqs = precompute_rope_freqs(8, 6, theta=100.0)
        self.assertEqual(freqs.dtype, torch.complex64)
        self.assertEqual(tuple(freqs.shape), (6, 4))
        p, i = 3, 2
        angle = p * 100.0 ** (-2 * i / 8)
        torch.testing.assert_close(freqs[p, i], torch.tensor(complex(math.cos(angle), math.sin(angle)), dtype=torch.complex64))
        torch.testing.assert_close(freqs.abs(), torch.ones(6, 4))

    def test_worked_example_head_dim_4(self):
        freqs = precompute_rope_freqs(4, 3)
        x = torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(1, 3, 1, 4)
        out = apply_rope(x, freqs)[0, :, 0]
        torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0, 1.0, 0.0]))
        torch.testing.assert_close(out[1], torch.tensor([0.5403, 0.8415, 0.99995, 0.0100]), atol=1e-4, rtol=0)
        torch.testing.assert_close(out[2], torch.tensor([-0.4161, 0.9093, 0.9998, 0.0200]), atol=1e-4, rtol=0)

    def test_adjacent_pairs_rotate_together(self):
        torch.manual_seed(0)
        seq_len, d_head = 5, 6
        x = torch.randn(2, seq_len, 3, d_head)
        out = apply_rope(x, precompute_rope_freqs(d_head, seq_len))
        for p in range(seq_len):
            for i in range(d_head // 2):
                angle = p * 10000.0 ** (-2 * i / d_head)
                c, s = math.cos(angle), math.sin(angle)
                a, b = x[:, p, :, 2 * i], x[:, p, :, 2 * i + 1]
                torch.testing.assert_close(out[:, p, :, 2 * i], a * c - b * s)
                torch.testing.assert_close(out[:, p, :, 2 * i + 1], a * s + b * c)

    def test_dtype_is_preserved(self):
        x = torch.randn(1, 2, 1, 4, dtype=torch.float64)
        self.assertEqual(apply_rope(x, precompute_rope_freqs(4, 2)).dtype, torch.float64)


class SwiGLUTest(unittest.TestCase):
    def test_hidden_width_rounds_up_to_multiple_of_8(self):
        table = {32: 88, 64: 176, 128: 344, 256: 688, 384: 1024, 512: 1368, 768: 2048, 1024: 2736}
        for d_model, d_ff in table.items():
            with self.subTest(d_model=d_model):
                ffn = SwiGLUFFN(d_model)
                self.assertEqual(ffn.w_gate.weight.shape, (d_ff, d_model))
                self.assertEqual(ffn.w_up.weight.shape, (d_ff, d_model))
                self.assertEqual(ffn.w_down.weight.shape, (d_model, d_ff))

    def test_gated_forward_and_layout(self):
        torch.manual_seed(0)
        ffn = SwiGLUFFN(16)
        self.assertEqual([name for name, _ in ffn.named_children()], ['w_gate', 'w_up', 'w_down', 'dropout'])
        self.assertTrue(all(m.bias is None for m in (ffn.w_gate, ffn.w_up, ffn.w_down)))
        x = torch.randn(2, 3, 16)
        gate = x @ ffn.w_gate.weight.T
        expected = (gate * torch.sigmoid(gate) * (x @ ffn.w_up.weight.T)) @ ffn.w_down.weight.T
        torch.testing.assert_close(ffn(x), expected)


class GroupedQueryAttentionTest(unittest.TestCase):
    def test_validation_messages(self):
        with self.assertRaisesRegex(ValueError, r'^d_model=10 must be divisible by n_heads=4\.$'):
            GroupedQuerySelfAttention(10, 4, 4)
        with self.assertRaisesRegex(ValueError, r'^n_heads=4 must be divisible by n_kv_heads=3\.$'):
            GroupedQuerySelfAttention(16, 4, 3)

    def test_layout(self):
        attn = GroupedQuerySelfAttention(32, n_heads=4, n_kv_heads=2, dropout=0.25)
        self.assertEqual((attn.n_kv_groups, attn.d_head), (2, 8))
        self.assertEqual([name for name, _ in attn.named_children()],
                         ['attn_dropout', 'out_dropout', 'w_q', 'w_k', 'w_v', 'w_o'])
        self.assertEqual(attn.attn_dropout.p, 0.25)
        self.assertEqual(attn.w_k.weight.shape, (16, 32))
        self.assertEqual(attn.w_v.weight.shape, (16, 32))
        self.assertTrue(all(m.bias is None for m in (attn.w_q, attn.w_k, attn.w_v, attn.w_o)))

    def _explicit_forward(self, attn, x, freqs, mask):
        """Per query head h, attend with KV head h // G (repeat_kv semantics), explicit softmax."""
        batch, seq_len, _ = x.shape
        d_head, groups = attn.d_head, attn.n_kv_groups
        q = apply_rope((x @ attn.w_q.weight.T).view(batch, seq_len, attn.n_heads, d_head), freqs)
        k = apply_rope((x @ attn.w_k.weight.T).view(batch, seq_len, attn.n_kv_heads, d_head), freqs)
        v = (x @ attn.w_v.weight.T).view(batch, seq_len, attn.n_kv_heads, d_head)
        heads = []
        for h in range(attn.n_heads):
            kv = h // groups
            heads.append(explicit_attention(q[:, :, h], k[:, :, kv], v[:, :, kv], mask))
        return torch.cat(heads, dim=-1) @ attn.w_o.weight.T

    def test_sdpa_matches_explicit_attention_in_eval(self):
        torch.manual_seed(0)
        seq_len = 7
        freqs = precompute_rope_freqs(8, seq_len)
        causal = torch.full((seq_len, seq_len), float('-inf')).triu(1)
        for n_kv_heads in (4, 2, 1):
            for mask in (None, causal):
                with self.subTest(n_kv_heads=n_kv_heads, masked=mask is not None):
                    attn = GroupedQuerySelfAttention(32, 4, n_kv_heads, dropout=0.5).eval()
                    x = torch.randn(2, seq_len, 32)
                    sdpa_mask = None if mask is None else mask[None, None]
                    torch.testing.assert_close(attn(x, freqs, sdpa_mask), self._explicit_forward(attn, x, freqs, mask),
                                               atol=1e-6, rtol=1e-5)

    def test_query_heads_of_a_group_share_one_kv_head(self):
        torch.manual_seed(0)
        attn = GroupedQuerySelfAttention(16, n_heads=4, n_kv_heads=2).eval()
        freqs = precompute_rope_freqs(4, 5)
        x = torch.randn(1, 5, 16)
        # Only KV head 1 changes: query heads 0 and 1 (group 0) must be unaffected, heads 2, 3 must change.
        with torch.no_grad():
            attn.w_o.weight.copy_(torch.eye(16))
            before = attn(x, freqs)
            attn.w_v.weight[4:8] += 1.0
            after = attn(x, freqs)
        torch.testing.assert_close(after[..., :8], before[..., :8])
        self.assertGreater((after[..., 8:] - before[..., 8:]).abs().max().item(), 1e-2)


class AttnResOperatorTest(unittest.TestCase):
    def test_zero_query_gives_uniform_depth_average(self):
        op = AttnResOperator(6)
        self.assertTrue(torch.equal(op.pseudo_query, torch.zeros(6)))
        self.assertEqual(type(op.key_norm), RMSNormNoWeight)
        sources = torch.stack([torch.full((2, 3, 6), 1.0), torch.full((2, 3, 6), 4.0), torch.full((2, 3, 6), -2.0)])
        torch.testing.assert_close(op(sources), torch.full((2, 3, 6), (1.0 + 4.0 - 2.0) / 3))
        torch.testing.assert_close(op.last_depth_attention_weights, torch.full((3, 2, 3), 1 / 3))

    def test_softmax_over_depth_of_normalised_keys_mixes_raw_values(self):
        op = AttnResOperator(2, eps=0.0)
        with torch.no_grad():
            op.pseudo_query.copy_(torch.tensor([1.0, 0.0]))
        # One token, two depth sources; keys normalise to (sqrt2, 0) and (0, sqrt2)·sign, values stay raw.
        sources = torch.tensor([[[[3.0, 0.0]]], [[[0.0, -5.0]]]])
        logits = torch.tensor([math.sqrt(2), 0.0])  # q · key_n, no 1/sqrt(D)
        w = torch.softmax(logits, dim=0)
        expected = w[0] * torch.tensor([3.0, 0.0]) + w[1] * torch.tensor([0.0, -5.0])
        torch.testing.assert_close(op(sources)[0, 0], expected)
        # Rescaling a source changes its value but not its key: the weights stay the same.
        op(sources * torch.tensor([10.0, 1.0])[:, None, None, None])
        torch.testing.assert_close(op.last_depth_attention_weights[:, 0, 0], w)

    def test_weights_are_not_state(self):
        op = AttnResOperator(4)
        op(torch.randn(2, 1, 3, 4))
        self.assertEqual(list(op.state_dict().keys()), ['pseudo_query'])


class SubLayerAndBackboneTest(unittest.TestCase):
    def test_sublayer_returns_only_its_output(self):
        torch.manual_seed(0)
        layer = AttnResSubLayer(8, 2, 2, dropout=0.0, ffn_mult=2.667, eps=1e-6, is_attention=False)
        self.assertEqual([name for name, _ in layer.named_children()], ['norm', 'attn_res', 'fn'])
        sources = torch.randn(3, 2, 4, 8)
        expected = layer.fn(layer.norm(sources.mean(dim=0)))  # zero query: uniform mix, no residual add
        torch.testing.assert_close(layer(sources, rope_freqs=None), expected)

    def test_layers_alternate_attention_and_ffn_and_rope_is_not_saved(self):
        backbone = AttnResTransformerBackbone(16, n_blocks=3, n_heads=2, n_kv_heads=1, max_seq_len=9)
        self.assertEqual([layer.is_attention for layer in backbone.layers], [True, False] * 3)
        self.assertEqual([type(layer.fn) for layer in backbone.layers], [GroupedQuerySelfAttention, SwiGLUFFN] * 3)
        self.assertEqual(backbone.rope_freqs.dtype, torch.complex64)
        self.assertEqual(tuple(backbone.rope_freqs.shape), (9, 4))
        self.assertFalse(any('rope_freqs' in key for key in backbone.state_dict()))
        self.assertEqual(len(backbone.state_dict()), 3 * (2 + 4) + 3 * (2 + 3))

    def test_output_is_plain_sum_of_all_states_and_layers_see_history(self):
        torch.manual_seed(0)
        backbone = AttnResTransformerBackbone(16, n_blocks=2, n_heads=2, n_kv_heads=2, max_seq_len=6).eval()
        with torch.no_grad():  # non-uniform depth weights, so the mixing is not trivially the mean
            for layer in backbone.layers:
                layer.attn_res.pseudo_query.normal_()
        inputs, outputs = [], []

        def record(module, args, output):
            inputs.append(args[0])
            outputs.append(output)

        for layer in backbone.layers:
            layer.register_forward_hook(record)
        x = torch.randn(2, 6, 16)
        y = backbone(x)
        self.assertEqual(len(outputs), 4)
        history = [x]
        for layer_input, layer_output in zip(inputs, outputs):
            torch.testing.assert_close(layer_input, torch.stack(history))
            history.append(layer_output)
        torch.testing.assert_close(y, x + sum(outputs))

    def test_keys_normalized_once_per_state_match_each_operator_normalizing_its_sources(self):
        torch.manual_seed(0)
        backbone = AttnResTransformerBackbone(16, n_blocks=2, n_heads=2, n_kv_heads=2, max_seq_len=6).eval()
        with torch.no_grad():
            for layer in backbone.layers:
                layer.attn_res.pseudo_query.normal_()

        def per_operator_keys(x):  # every sub-layer normalizes the whole restacked history itself
            outputs = [x]
            for layer in backbone.layers:
                outputs.append(layer(torch.stack(outputs), backbone.rope_freqs[: x.shape[1]]))
            return torch.stack(outputs).sum(0)

        x, dx = torch.randn(2, 6, 16, dtype=torch.float64), torch.randn(2, 6, 16, dtype=torch.float64)
        backbone.double()
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            y, dy = torch.func.jvp(backbone, (x,), (dx,))
            expected_y, expected_dy = torch.func.jvp(per_operator_keys, (x,), (dx,))
        self.assertTrue(torch.equal(y, expected_y))
        self.assertTrue(torch.equal(dy, expected_dy))
        grads = torch.autograd.grad(backbone(x).square().sum(), list(backbone.parameters()))
        expected_grads = torch.autograd.grad(per_operator_keys(x).square().sum(), list(backbone.parameters()))
        for grad, expected in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)

    def test_causal_mask_hides_future_tokens(self):
        torch.manual_seed(0)
        x = torch.randn(1, 6, 16)
        x_changed = x.clone()
        x_changed[:, 4] += 1.0
        for causal in (True, False):
            backbone = AttnResTransformerBackbone(16, 2, 2, 2, max_seq_len=6, causal_attn=causal).eval()
            with torch.no_grad():
                diff = (backbone(x) - backbone(x_changed)).abs().amax(dim=-1)[0]
            if causal:
                self.assertEqual(diff[:4].max().item(), 0.0)
            else:
                self.assertGreater(diff[:4].min().item(), 0.0)
            self.assertGreater(diff[4:].min().item(), 0.0)

    def test_causal_mask_layout(self):
        mask = AttnResTransformerBackbone._build_causal_mask(3, torch.device('cpu'))
        inf = float('-inf')
        self.assertTrue(torch.equal(mask, torch.tensor([[[[0.0, inf, inf], [0.0, 0.0, inf], [0.0, 0.0, 0.0]]]])))

    def test_too_long_sequence_is_rejected(self):
        backbone = AttnResTransformerBackbone(8, 1, 1, 1, max_seq_len=4)
        with self.assertRaisesRegex(ValueError, 'exceeds max_seq_len=4'):
            backbone(torch.randn(1, 5, 8))


if __name__ == '__main__':
    unittest.main()
