"""IMFTransformer1D: forward semantics, init, optimizer groups, the vanilla fallback and forward-mode AD. The
checkpoint layout, parameter counts and messages shared with the external head are in
test_imf_transformer1d_external_alignment."""
import math
import unittest

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from roboimi.vla.models.heads.attnres_transformer_components import AttnResOperator, RMSNorm
from roboimi.vla.models.heads.imf_transformer1d import IMFTransformer1D
from roboimi.vla.models.heads.utils import SinusoidalPosEmb
from tests.test_imf_transformer1d_external_alignment import small_head

torch.set_num_threads(1)

class ForwardTest(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.head = small_head().eval()
        with torch.no_grad():  # non-trivial depth mixing
            for module in self.head.modules():
                if isinstance(module, AttnResOperator):
                    module.pseudo_query.normal_()
        self.sample = torch.randn(3, 16, 16)
        self.cond = torch.randn(3, 2, 32)

    def run_head(self, sample=None, r=0.25, t=0.75, cond=None):
        with torch.no_grad():
            return self.head(self.sample if sample is None else sample, r, t, self.cond if cond is None else cond)

    def test_output_shape(self):
        self.assertEqual(self.run_head().shape, (3, 16, 16))

    def test_scalar_one_element_and_batch_times_agree(self):
        reference = self.run_head(r=0.25, t=0.75)
        for r, t in [(torch.tensor(0.25), torch.tensor(0.75)), (torch.tensor([0.25]), torch.tensor([0.75])),
                     (torch.full((3,), 0.25), torch.full((3,), 0.75)),
                     (torch.full((3,), 0.25, dtype=torch.float64), torch.full((3,), 0.75, dtype=torch.float64))]:
            torch.testing.assert_close(self.run_head(r=r, t=t), reference, rtol=0, atol=0)

    def test_output_depends_on_cond_r_and_t(self):
        reference = self.run_head()
        for changed in (self.run_head(cond=self.cond + 1.0), self.run_head(r=0.5), self.run_head(t=0.5)):
            self.assertGreater((changed - reference).abs().max().item(), 1e-4)

    def test_per_sample_times_act_per_sample(self):
        out = self.run_head(r=torch.tensor([0.25, 0.5, 0.25]), t=0.75)
        reference = self.run_head()
        torch.testing.assert_close(out[[0, 2]], reference[[0, 2]])
        self.assertGreater((out[1] - reference[1]).abs().max().item(), 1e-4)

    def test_token_sequence_and_readout(self):
        captured = {}

        def record(module, args, output):
            captured['tokens'], captured['states'] = args[0], output

        self.head.attnres_backbone.register_forward_hook(record)
        out = self.run_head(r=0.25, t=0.75)
        head, tokens = self.head, captured['tokens']

        def time_token(value):
            return head.time_token_proj(head.time_emb(torch.full((3,), value)))

        with torch.no_grad():
            self.assertEqual(tuple(tokens.shape), (3, 2 + 2 + 16, 64))
            torch.testing.assert_close(tokens[:, 0], time_token(0.25))  # r first, one shared projection
            torch.testing.assert_close(tokens[:, 1], time_token(0.75))
            torch.testing.assert_close(tokens[:, 2:4], head.cond_obs_emb(self.cond))
            torch.testing.assert_close(tokens[:, 4:], head.input_emb(self.sample))
            torch.testing.assert_close(out, head.head(head.ln_f(captured['states'][:, 4:])))

    def test_input_is_cast_to_weight_dtype(self):
        out = self.run_head(sample=self.sample.double(), cond=self.cond.double())
        self.assertEqual(out.dtype, torch.float32)
        torch.testing.assert_close(out, self.run_head())

    def test_causal_attention_masks_future_action_tokens(self):
        torch.manual_seed(1)
        head = small_head(causal_attn=True).eval()
        changed = self.sample.clone()
        changed[:, 10] += 1.0
        with torch.no_grad():
            diff = (head(changed, 0.25, 0.75, self.cond) - head(self.sample, 0.25, 0.75, self.cond)).abs().amax(dim=(0, 2))
        self.assertEqual(diff[:10].max().item(), 0.0)
        self.assertGreater(diff[10:].min().item(), 0.0)

    def test_bidirectional_by_default(self):
        changed = self.sample.clone()
        changed[:, 10] += 1.0
        diff = (self.run_head(sample=changed) - self.run_head()).abs().amax(dim=(0, 2))
        self.assertGreater(diff[:10].min().item(), 0.0)

    def test_cond_with_more_steps_than_declared_fails_clearly(self):
        with self.assertRaisesRegex(ValueError, 'exceeds max_seq_len=20'):
            self.run_head(cond=torch.randn(3, 3, 32))


class TimeEmbeddingTest(unittest.TestCase):
    def test_worked_example_dim_8(self):
        out = SinusoidalPosEmb(8)(torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(out[0], torch.tensor([0.8415, 0.04640, 0.002154, 0.0001, 0.5403, 0.99892, 1.0, 1.0]),
                                   atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]))

    def test_frequencies_and_dtype(self):
        out = SinusoidalPosEmb(6)(torch.tensor([0.3], dtype=torch.float64))
        self.assertEqual(out.dtype, torch.float64)
        freqs = [math.exp(-k * math.log(10000) / 2) for k in range(3)]
        expected = [math.sin(0.3 * f) for f in freqs] + [math.cos(0.3 * f) for f in freqs]
        torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float64))


class InitTest(unittest.TestCase):
    def test_init_rules(self):
        torch.manual_seed(0)
        head = IMFTransformer1D(16, 16, 16, n_obs_steps=2, cond_dim=32, n_layer=2, n_head=2, n_kv_head=2, n_emb=128)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        weights = torch.cat([m.weight.flatten() for m in linears])
        self.assertAlmostEqual(weights.std().item(), 0.02, delta=0.0005)
        self.assertAlmostEqual(weights.mean().item(), 0.0, delta=0.0005)
        for m in linears:
            self.assertAlmostEqual(m.weight.std().item(), 0.02, delta=0.004)
            if m.bias is not None:
                self.assertTrue(torch.equal(m.bias, torch.zeros_like(m.bias)))
        norms = [m for m in head.modules() if isinstance(m, RMSNorm)]
        self.assertEqual(len(norms), 5)
        self.assertTrue(all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms))
        operators = [m for m in head.modules() if isinstance(m, AttnResOperator)]
        self.assertEqual(len(operators), 4)
        self.assertTrue(all(torch.equal(m.pseudo_query, torch.zeros(128)) for m in operators))

    def test_vanilla_positional_embeddings_are_drawn(self):
        torch.manual_seed(0)
        head = small_head(n_emb=256, n_head=4, backbone_type='vanilla')
        self.assertAlmostEqual(head.pos_emb.std().item(), 0.02, delta=0.001)
        self.assertAlmostEqual(head.cond_pos_emb.std().item(), 0.02, delta=0.002)
        norm = head.decoder.layers[0].norm1
        self.assertTrue(torch.equal(norm.weight, torch.ones(256)) and torch.equal(norm.bias, torch.zeros(256)))
        attn = head.decoder.layers[0].self_attn
        self.assertAlmostEqual(attn.in_proj_weight.std().item(), 0.02, delta=0.001)
        self.assertTrue(torch.equal(attn.in_proj_bias, torch.zeros_like(attn.in_proj_bias)))

    def test_unknown_module_type_is_refused(self):
        head = small_head()
        head.extra = nn.Conv1d(2, 2, 1)
        with self.assertRaisesRegex(RuntimeError, r'^Unaccounted module Conv1d'):
            head.apply(head._init_weights)


class OptimGroupsTest(unittest.TestCase):
    def test_small_config_groups(self):
        head = small_head()
        decay_group, no_decay_group = head.get_optim_groups(weight_decay=0.05)
        names = {id(p): n for n, p in head.named_parameters()}
        decay = [names[id(p)] for p in decay_group['params']]
        no_decay = [names[id(p)] for p in no_decay_group['params']]
        block_weights = [f'attnres_backbone.layers.{i}.fn.{w}.weight' for i in (0, 2) for w in ('w_q', 'w_k', 'w_v', 'w_o')]
        block_weights += [f'attnres_backbone.layers.{i}.fn.{w}.weight' for i in (1, 3) for w in ('w_gate', 'w_up', 'w_down')]
        expected_decay = block_weights + ['cond_obs_emb.weight', 'head.weight', 'input_emb.weight', 'time_token_proj.weight']
        expected_no_decay = (['_dummy_variable', 'ln_f.weight', 'input_emb.bias', 'cond_obs_emb.bias', 'time_token_proj.bias', 'head.bias']
                             + [f'attnres_backbone.layers.{i}.{n}' for i in range(4) for n in ('norm.weight', 'attn_res.pseudo_query')])
        self.assertEqual((len(expected_decay), len(expected_no_decay)), (18, 14))
        self.assertEqual(decay, sorted(expected_decay))
        self.assertEqual(no_decay, sorted(expected_no_decay))
        self.assertEqual((decay_group['weight_decay'], no_decay_group['weight_decay']), (0.05, 0.0))

    def test_vanilla_groups_partition_parameters(self):
        head = small_head(n_head=4, backbone_type='vanilla', n_cond_layers=1, causal_attn=True)
        decay_group, no_decay_group = head.get_optim_groups()
        names = {id(p): n for n, p in head.named_parameters()}
        decay = {names[id(p)] for p in decay_group['params']}
        no_decay = {names[id(p)] for p in no_decay_group['params']}
        self.assertEqual(decay | no_decay, set(names.values()))
        self.assertFalse(decay & no_decay)
        self.assertTrue({'pos_emb', 'cond_pos_emb', '_dummy_variable', 'ln_f.weight', 'ln_f.bias'} <= no_decay)
        self.assertIn('decoder.layers.0.self_attn.in_proj_weight', decay)
        self.assertIn('encoder.layers.0.self_attn.out_proj.weight', decay)
        self.assertIn('decoder.layers.0.multihead_attn.in_proj_bias', no_decay)
        self.assertEqual(decay_group['weight_decay'], 1e-3)



class VanillaFallbackTest(unittest.TestCase):
    def test_encoder_decoder_layout_buffers_and_memory_mask_rule(self):
        head = small_head(n_head=4, backbone_type='vanilla', causal_attn=True)
        state = head.state_dict()
        self.assertIsNone(head.time_token_proj)
        self.assertIsNone(head.attnres_backbone)
        self.assertIsInstance(head.ln_f, nn.LayerNorm)
        self.assertEqual(tuple(state['pos_emb'].shape), (1, 16, 64))
        self.assertEqual(tuple(state['cond_pos_emb'].shape), (1, 4, 64))
        self.assertIn('encoder.0.weight', state)
        self.assertIn('encoder.2.weight', state)
        self.assertIn('decoder.layers.1.multihead_attn.in_proj_weight', state)
        self.assertFalse(any(k.startswith('time_token_proj') for k in state))
        inf = float('-inf')
        expected_mask = torch.tensor([[0.0 if j <= i else inf for j in range(16)] for i in range(16)])
        expected_memory = torch.tensor([[0.0 if i >= s - 2 else inf for s in range(4)] for i in range(16)])
        self.assertTrue(torch.equal(state['mask'], expected_mask))
        self.assertTrue(torch.equal(state['memory_mask'], expected_memory))
        self.assertEqual(head.memory_mask[0].tolist(), [0.0, 0.0, 0.0, inf])  # action 0 sees r, t, obs 0

    def test_runs_and_depends_on_inputs(self):
        torch.manual_seed(0)
        head = small_head(n_head=4, backbone_type='vanilla', causal_attn=True).eval()
        sample, cond = torch.randn(2, 16, 16), torch.randn(2, 2, 32)
        with torch.no_grad():
            out = head(sample, 0.2, 0.8, cond)
            self.assertEqual(out.shape, (2, 16, 16))
            for other in (head(sample, 0.3, 0.8, cond), head(sample, 0.2, 0.7, cond), head(sample, 0.2, 0.8, cond + 1)):
                self.assertGreater((other - out).abs().max().item(), 1e-5)

    def test_without_causal_the_masks_are_not_state(self):
        head = small_head(n_head=4, backbone_type='vanilla')
        self.assertIsNone(head.mask)
        self.assertNotIn('mask', head.state_dict())

    def test_encoder_only_variant(self):
        head = IMFTransformer1D(5, 5, 8, n_layer=1, n_head=2, n_kv_head=2, n_emb=32, time_as_cond=False,
                                backbone_type='vanilla', causal_attn=True).eval()
        self.assertTrue(head.encoder_only)
        self.assertEqual((head.T, head.T_cond), (10, 0))
        self.assertEqual(tuple(head.pos_emb.shape), (1, 10, 32))
        self.assertIsNone(head.cond_pos_emb)
        self.assertIsNone(head.memory_mask)
        self.assertEqual(tuple(head.mask.shape), (10, 10))
        with torch.no_grad():
            self.assertEqual(head(torch.randn(2, 8, 5), 0.0, 1.0).shape, (2, 8, 5))


class JvpTest(unittest.TestCase):
    def test_forward_mode_jvp_matches_central_difference(self):
        torch.manual_seed(0)
        head = small_head(n_head=2, n_kv_head=1, n_emb=32).double().eval()
        with torch.no_grad():
            for module in head.modules():
                if isinstance(module, AttnResOperator):
                    module.pseudo_query.normal_()
        z = torch.randn(2, 16, 16, dtype=torch.float64)
        cond = torch.randn(2, 2, 32, dtype=torch.float64)
        r = torch.tensor([0.1, 0.3], dtype=torch.float64)
        t = torch.tensor([0.6, 0.9], dtype=torch.float64)
        v = torch.randn_like(z)

        def g(z_, r_, t_):
            return head(z_, r_, t_, cond)

        with sdpa_kernel(SDPBackend.MATH):
            u, du_dt = torch.func.jvp(g, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
        h = 1e-5
        with torch.no_grad():
            finite_difference = (g(z + h * v, r, t + h) - g(z - h * v, r, t - h)) / (2 * h)
            torch.testing.assert_close(u, g(z, r, t))
        self.assertGreater(du_dt.abs().max().item(), 1e-3)
        torch.testing.assert_close(du_dt, finite_difference, rtol=1e-6, atol=1e-8)


if __name__ == '__main__':
    unittest.main()
