"""Transformer1D (baseline DDPM head): layout, causal masks, time inputs, init and optimizer groups."""
import unittest

import torch
from torch import nn

from roboimi.vla.models.heads.transformer1d import Transformer1D

torch.set_num_threads(1)

TINY = dict(input_dim=6, output_dim=6, horizon=8, n_obs_steps=2, cond_dim=10, n_layer=1, n_head=2, n_emb=32)


def tiny_head(**overrides) -> Transformer1D:
    return Transformer1D(**{**TINY, **overrides})


class LayoutTest(unittest.TestCase):
    def test_lengths_and_keys(self):
        head = tiny_head()
        self.assertEqual((head.T, head.T_cond), (8, 3))  # time token + 2 observation tokens
        self.assertTrue(head.obs_as_cond)
        self.assertFalse(head.encoder_only)
        state = head.state_dict()
        self.assertEqual(list(state)[:3], ['_dummy_variable', 'pos_emb', 'cond_pos_emb'])
        self.assertEqual(tuple(state['pos_emb'].shape), (1, 8, 32))
        self.assertEqual(tuple(state['cond_pos_emb'].shape), (1, 3, 32))
        self.assertEqual(tuple(state['encoder.0.weight'].shape), (128, 32))
        self.assertEqual(tuple(state['encoder.2.weight'].shape), (32, 128))
        self.assertEqual(tuple(state['decoder.layers.0.linear1.weight'].shape), (128, 32))
        self.assertEqual(tuple(state['cond_obs_emb.weight'].shape), (32, 10))
        layer = head.decoder.layers[0]
        self.assertTrue(layer.norm_first)
        self.assertEqual(layer.self_attn.num_heads, 2)

    def test_transformer_condition_encoder(self):
        head = tiny_head(n_cond_layers=2)
        self.assertIsInstance(head.encoder, nn.TransformerEncoder)
        self.assertEqual(len(head.encoder.layers), 2)

    def test_encoder_only_without_time_as_cond(self):
        head = tiny_head(cond_dim=0, time_as_cond=False, causal_attn=True).eval()
        self.assertTrue(head.encoder_only)
        self.assertEqual((head.T, head.T_cond), (9, 0))
        self.assertIsNone(head.decoder)
        self.assertIsNone(head.cond_pos_emb)
        self.assertEqual(tuple(head.mask.shape), (9, 9))
        with torch.no_grad():
            self.assertEqual(head(torch.randn(2, 8, 6), 3).shape, (2, 8, 6))


class ForwardTest(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.sample = torch.randn(3, 8, 6)
        self.cond = torch.randn(3, 2, 10)

    def test_output_shape_and_dependence_on_inputs(self):
        head = tiny_head().eval()
        with torch.no_grad():
            out = head(self.sample, 5, self.cond)
            self.assertEqual(out.shape, (3, 8, 6))
            for other in (head(self.sample, 6, self.cond), head(self.sample, 5, self.cond + 1.0)):
                self.assertGreater((other - out).abs().max().item(), 1e-5)

    def test_scalar_one_element_and_batch_timesteps_agree(self):
        head = tiny_head().eval()
        with torch.no_grad():
            reference = head(self.sample, 7, self.cond)
            for timestep in (torch.tensor(7), torch.tensor([7]), torch.full((3,), 7), torch.full((3,), 7.0)):
                torch.testing.assert_close(head(self.sample, timestep, self.cond), reference, rtol=0, atol=0)
            mixed = head(self.sample, torch.tensor([7, 20, 7]), self.cond)
        torch.testing.assert_close(mixed[[0, 2]], reference[[0, 2]])
        self.assertGreater((mixed[1] - reference[1]).abs().max().item(), 1e-5)

    def test_missing_cond_is_reported(self):
        with self.assertRaisesRegex(ValueError, 'cond is required'):
            tiny_head()(self.sample, 1)


class CausalMaskTest(unittest.TestCase):
    def test_persistent_masks_follow_the_rules(self):
        head = tiny_head(causal_attn=True)
        inf = float('-inf')
        expected_mask = torch.tensor([[0.0 if j <= i else inf for j in range(8)] for i in range(8)])
        expected_memory = torch.tensor([[0.0 if i >= s - 1 else inf for s in range(3)] for i in range(8)])
        state = head.state_dict()
        self.assertTrue(torch.equal(state['mask'], expected_mask))
        self.assertTrue(torch.equal(state['memory_mask'], expected_memory))
        self.assertEqual(head.memory_mask[0].tolist(), [0.0, 0.0, inf])  # action 0 sees the time token and obs 0

    def test_no_masks_without_causal_attn(self):
        head = tiny_head()
        self.assertIsNone(head.mask)
        self.assertIsNone(head.memory_mask)
        self.assertFalse({'mask', 'memory_mask'} & set(head.state_dict()))

    def test_no_memory_mask_without_observation_condition(self):
        head = tiny_head(cond_dim=0, causal_attn=True)
        self.assertIsNone(head.memory_mask)
        self.assertEqual(tuple(head.mask.shape), (8, 8))

    def test_future_actions_and_observations_are_hidden(self):
        torch.manual_seed(0)
        head = tiny_head(causal_attn=True).eval()
        sample, cond = torch.randn(2, 8, 6), torch.randn(2, 2, 10)
        changed_action = sample.clone()
        changed_action[:, 5] += 1.0
        changed_obs = cond.clone()
        changed_obs[:, 1] += 1.0
        with torch.no_grad():
            reference = head(sample, 4, cond)
            action_diff = (head(changed_action, 4, cond) - reference).abs().amax(dim=(0, 2))
            obs_diff = (head(sample, 4, changed_obs) - reference).abs().amax(dim=(0, 2))
        self.assertEqual(action_diff[:5].max().item(), 0.0)
        self.assertGreater(action_diff[5:].min().item(), 0.0)
        # The condition passes through the (per-token) MLP encoder, so obs 1 (cond position 2) reaches actions >= 1.
        self.assertEqual(obs_diff[0].item(), 0.0)
        self.assertGreater(obs_diff[1:].min().item(), 0.0)


class InitTest(unittest.TestCase):
    def test_init_rules(self):
        torch.manual_seed(0)
        head = tiny_head(n_emb=128, n_head=4, n_layer=2)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        weights = torch.cat([m.weight.flatten() for m in linears])
        self.assertAlmostEqual(weights.std().item(), 0.02, delta=0.0005)
        self.assertTrue(all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears if m.bias is not None))
        attns = [m for m in head.modules() if isinstance(m, nn.MultiheadAttention)]
        self.assertEqual(len(attns), 4)
        for attn in attns:
            self.assertAlmostEqual(attn.in_proj_weight.std().item(), 0.02, delta=0.001)
            self.assertTrue(torch.equal(attn.in_proj_bias, torch.zeros_like(attn.in_proj_bias)))
        norms = [m for m in head.modules() if isinstance(m, nn.LayerNorm)]
        self.assertEqual(len(norms), 7)  # 3 per decoder layer + ln_f
        for norm in norms:
            self.assertTrue(torch.equal(norm.weight, torch.ones(128)) and torch.equal(norm.bias, torch.zeros(128)))
        for pos_emb in (head.pos_emb, head.cond_pos_emb):  # drawn, not left at zero
            self.assertAlmostEqual(pos_emb.std().item(), 0.02, delta=0.003)

    def test_unknown_module_type_is_refused(self):
        head = tiny_head()
        head.extra = nn.GRU(2, 2)
        with self.assertRaisesRegex(RuntimeError, r'^Unaccounted module GRU'):
            head.apply(head._init_weights)


class OptimGroupsTest(unittest.TestCase):
    def test_groups_match_the_rule(self):
        head = tiny_head()
        decay_group, no_decay_group = head.get_optim_groups(weight_decay=0.1)
        names = {id(p): n for n, p in head.named_parameters()}
        decay = [names[id(p)] for p in decay_group['params']]
        no_decay = [names[id(p)] for p in no_decay_group['params']]
        layer = 'decoder.layers.0.'
        expected_decay = ['input_emb.weight', 'cond_obs_emb.weight', 'encoder.0.weight', 'encoder.2.weight', 'head.weight'] + [
            layer + n for n in ('self_attn.in_proj_weight', 'self_attn.out_proj.weight', 'multihead_attn.in_proj_weight',
                                'multihead_attn.out_proj.weight', 'linear1.weight', 'linear2.weight')]
        expected_no_decay = ['_dummy_variable', 'pos_emb', 'cond_pos_emb', 'input_emb.bias', 'cond_obs_emb.bias', 'encoder.0.bias',
                             'encoder.2.bias', 'head.bias', 'ln_f.weight', 'ln_f.bias'] + [
            layer + n for n in ('self_attn.in_proj_bias', 'self_attn.out_proj.bias', 'multihead_attn.in_proj_bias',
                                'multihead_attn.out_proj.bias', 'linear1.bias', 'linear2.bias', 'norm1.weight', 'norm1.bias',
                                'norm2.weight', 'norm2.bias', 'norm3.weight', 'norm3.bias')]
        self.assertEqual(decay, sorted(expected_decay))
        self.assertEqual(no_decay, sorted(expected_no_decay))
        self.assertEqual(len(decay) + len(no_decay), len(names))
        self.assertEqual((decay_group['weight_decay'], no_decay_group['weight_decay']), (0.1, 0.0))



if __name__ == '__main__':
    unittest.main()
