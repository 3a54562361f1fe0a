"""IMFTransformer1D against the diffusion_policy IMF-AttnRes head it ports: the same state-dict keys, order and
shapes, the same parameter counts, the same validation messages, and loading that head's saved weights."""
import argparse
import os
import re
import tempfile
import unittest

import torch

from roboimi.vla.models.heads.external_checkpoint import load_external_imf_head_state_dict
from roboimi.vla.models.heads.imf_transformer1d import IMFTransformer1D

torch.set_num_threads(1)

SMALL = dict(input_dim=16, output_dim=16, horizon=16, n_obs_steps=2, cond_dim=32, n_layer=2, n_head=1, n_kv_head=1, n_emb=64)


def small_head(**overrides) -> IMFTransformer1D:
    return IMFTransformer1D(**{**SMALL, **overrides})


def expected_param_count(D, L, H, K, C, A, O, F):
    """The attnres_full parameter-count formula (cond_dim > 0)."""
    kv_width = D * K // H
    per_block = 2 * D + 2 * D * D + 2 * D * kv_width + 2 * D + 3 * D * F
    return (A * D + D) + (C * D + D) + (D * D + D) + L * per_block + D + (D * O + O)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _attn_keys(i):
    return [(f'attnres_backbone.layers.{i}.norm.weight', (64,)), (f'attnres_backbone.layers.{i}.attn_res.pseudo_query', (64,))] + [
        (f'attnres_backbone.layers.{i}.fn.{w}.weight', (64, 64)) for w in ('w_q', 'w_k', 'w_v', 'w_o')]


def _ffn_keys(i):
    return [(f'attnres_backbone.layers.{i}.norm.weight', (64,)), (f'attnres_backbone.layers.{i}.attn_res.pseudo_query', (64,)),
            (f'attnres_backbone.layers.{i}.fn.w_gate.weight', (176, 64)), (f'attnres_backbone.layers.{i}.fn.w_up.weight', (176, 64)),
            (f'attnres_backbone.layers.{i}.fn.w_down.weight', (64, 176))]


SMALL_LAYOUT = (
    [('_dummy_variable', (0,)), ('input_emb.weight', (64, 16)), ('input_emb.bias', (64,)), ('cond_obs_emb.weight', (64, 32)),
     ('cond_obs_emb.bias', (64,)), ('time_token_proj.weight', (64, 64)), ('time_token_proj.bias', (64,))]
    + _attn_keys(0) + _ffn_keys(1) + _attn_keys(2) + _ffn_keys(3)
    + [('ln_f.weight', (64,)), ('head.weight', (16, 64)), ('head.bias', (16,))]
)


class LayoutTest(unittest.TestCase):
    def test_small_config_state_dict_keys_order_and_shapes(self):
        head = small_head()
        self.assertEqual(len(SMALL_LAYOUT), 32)
        self.assertEqual([(k, tuple(v.shape)) for k, v in head.state_dict().items()], SMALL_LAYOUT)
        self.assertEqual([k for k, _ in head.named_parameters()], [k for k, _ in SMALL_LAYOUT])

    def test_rope_table_is_the_only_buffer_and_not_saved(self):
        head = small_head(causal_attn=True)
        buffers = dict(head.named_buffers())
        self.assertEqual(list(buffers), ['attnres_backbone.rope_freqs'])
        self.assertEqual(buffers['attnres_backbone.rope_freqs'].dtype, torch.complex64)
        self.assertEqual(tuple(buffers['attnres_backbone.rope_freqs'].shape), (20, 32))  # 16 + 2 + 2 tokens
        self.assertNotIn('attnres_backbone.rope_freqs', head.state_dict())
        self.assertIsNone(head.mask)
        self.assertIsNone(head.memory_mask)

    def test_plain_attributes(self):
        head = small_head(obs_as_cond=False)
        self.assertEqual((head.T, head.T_cond, head.horizon), (16, 4, 16))
        self.assertTrue(head.obs_as_cond)  # derived from cond_dim > 0, the argument is ignored
        self.assertTrue(head.time_as_cond)
        self.assertFalse(head.encoder_only)
        self.assertEqual(head.backbone_type, 'attnres_full')
        self.assertIsNone(head.pos_emb)
        self.assertIsNone(head.cond_pos_emb)

    def test_grouped_kv_projections(self):
        head = small_head(n_head=4, n_kv_head=2)
        self.assertEqual(tuple(head.attnres_backbone.layers[0].fn.w_k.weight.shape), (32, 64))
        self.assertEqual(tuple(head.attnres_backbone.layers[0].fn.w_v.weight.shape), (32, 64))


class ParameterCountTest(unittest.TestCase):
    def test_formula_matches_instantiated_small_heads(self):
        for D, L, H, K, C, A, O in [(64, 2, 1, 1, 32, 16, 16), (32, 3, 4, 2, 10, 7, 5), (48, 1, 4, 1, 3, 2, 9)]:
            with self.subTest(D=D, L=L, H=H, K=K):
                head = IMFTransformer1D(A, O, horizon=8, n_obs_steps=2, cond_dim=C, n_layer=L, n_head=H, n_kv_head=K, n_emb=D)
                F = head.attnres_backbone.layers[1].fn.d_ff
                self.assertEqual(count(head), expected_param_count(D, L, H, K, C, A, O, F))

    def test_small_config_has_109328_parameters(self):
        self.assertEqual(count(small_head()), 109_328)
        self.assertEqual(expected_param_count(64, 2, 1, 1, 32, 16, 16, 176), 109_328)

    def test_reference_run_head_has_32119312_parameters(self):
        head = IMFTransformer1D(16, 16, 16, n_obs_steps=2, cond_dim=208, n_layer=18, n_head=1, n_kv_head=1, n_emb=384)
        self.assertEqual(count(head), 32_119_312)

    def test_count_table(self):
        table = [  # D, L, H, K, C, A = O, d_ff, params
            (384, 18, 1, 1, 206, 14, 1024, 32_117_006),
            (256, 12, 8, 8, 208, 16, 688, 9_626_640),
            (768, 12, 8, 8, 72, 7, 2048, 85_630_471),
            (768, 16, 8, 8, 960, 7, 2048, 114_636_295),
        ]
        for D, L, H, K, C, A, F, params in table:
            with self.subTest(D=D, L=L, C=C):
                self.assertEqual(expected_param_count(D, L, H, K, C, A, A, F), params)
                with torch.device('meta'):  # shapes only, no memory
                    head = IMFTransformer1D(A, A, 16, n_obs_steps=2, cond_dim=C, n_layer=L, n_head=H, n_kv_head=K, n_emb=D)
                self.assertEqual(count(head), params)


class ValidationTest(unittest.TestCase):
    def test_constructor_messages_verbatim(self):
        cases = [
            (dict(n_head=0), 'n_head must be >= 1, got 0.'),
            (dict(n_kv_head=0), 'n_kv_head must be >= 1, got 0.'),
            (dict(n_emb=64, n_head=3, n_kv_head=1), 'n_emb=64 must be divisible by n_head=3.'),
            (dict(n_head=4, n_kv_head=3), 'n_head=4 must be divisible by n_kv_head=3.'),
            (dict(n_emb=60, n_head=4, n_kv_head=4),
             'attnres_full uses RoPE, which requires an even per-head dimension. Got n_emb=60, n_head=4, head_dim=15.'),
            (dict(cond_dim=0, time_as_cond=False), 'attnres_full backbone requires time_as_cond=True.'),
            (dict(n_cond_layers=1), 'attnres_full backbone does not support n_cond_layers > 0.'),
        ]
        for overrides, message in cases:
            with self.subTest(message=message):
                with self.assertRaisesRegex(ValueError, '^' + re.escape(message) + '$'):
                    small_head(**overrides)

    def test_default_n_kv_head_is_8(self):
        with self.assertRaisesRegex(ValueError, r'^n_head=1 must be divisible by n_kv_head=8\.$'):
            IMFTransformer1D(4, 4, 8, cond_dim=4, n_layer=1, n_head=1, n_emb=16)

    def test_vanilla_ignores_rope_constraints(self):
        head = small_head(n_emb=60, n_head=4, n_kv_head=4, backbone_type='vanilla', n_cond_layers=1)
        self.assertEqual(head(torch.randn(2, 16, 16), 0.0, 1.0, torch.randn(2, 2, 32)).shape, (2, 16, 16))

    def test_missing_cond_message_verbatim(self):
        with self.assertRaisesRegex(ValueError, r'^cond is required when obs_as_cond=True for attnres_full backbone\.$'):
            small_head()(torch.randn(2, 16, 16), 0.0, 1.0)

    def test_two_dimensional_time_is_rejected(self):
        with self.assertRaisesRegex(ValueError, 'scalar, a \\(1,\\) or a \\(B,\\) tensor'):
            small_head()(torch.randn(2, 16, 16), torch.zeros(2, 1), 1.0, torch.randn(2, 2, 32))


CONFIG = dict(input_dim=4, output_dim=4, horizon=6, n_obs_steps=2, cond_dim=8, n_layer=1, n_head=2, n_kv_head=1, n_emb=16)


def make_head(seed: int, **overrides) -> IMFTransformer1D:
    torch.manual_seed(seed)
    head = IMFTransformer1D(**{**CONFIG, **overrides}).eval()
    with torch.no_grad():  # make every parameter distinguishable from a fresh init
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return head


def prefixed(state_dict, prefix):
    return {prefix + key: value for key, value in state_dict.items()}


class ExternalCheckpointTest(unittest.TestCase):
    def setUp(self):
        self.source = make_head(seed=0)
        self.target = make_head(seed=1)
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def save(self, obj, name='head.ckpt'):
        path = os.path.join(self.tmp.name, name)
        torch.save(obj, path)
        return path

    def assert_loaded(self):
        for (name, expected), actual in zip(self.source.state_dict().items(), self.target.state_dict().values()):
            self.assertTrue(torch.equal(actual, expected), name)
        sample, cond = torch.randn(2, 6, 4), torch.randn(2, 2, 8)
        with torch.no_grad():
            torch.testing.assert_close(self.target(sample, 0.0, 1.0, cond), self.source(sample, 0.0, 1.0, cond), rtol=0, atol=0)

    def test_round_trip_through_file_with_prefix_and_wrapper(self):
        checkpoint = {
            'state_dict': {**prefixed(self.source.state_dict(), 'model.'), 'obs_encoder.proj.weight': torch.ones(3, 3)},
            'epoch': 7,
        }
        prefix = load_external_imf_head_state_dict(self.target, self.save(checkpoint))
        self.assertEqual(prefix, 'model.')
        self.assert_loaded()

    def test_bare_state_dict_and_stacked_prefixes(self):
        self.assertEqual(load_external_imf_head_state_dict(self.target, dict(self.source.state_dict())), '')
        self.assert_loaded()
        target = make_head(seed=2)
        wrapped = {'state_dicts': {'model': prefixed(self.source.state_dict(), 'module.noise_pred_net.')}}
        self.assertEqual(load_external_imf_head_state_dict(target, wrapped), 'module.noise_pred_net.')
        self.assertTrue(torch.equal(target.head.weight, self.source.head.weight))

    def test_explicit_prefix_without_trailing_dot(self):
        both = {**prefixed(self.source.state_dict(), 'ema.'), **prefixed(make_head(seed=3).state_dict(), 'model.')}
        with self.assertRaisesRegex(ValueError, r"several heads, under the prefixes \['ema\.', 'model\.'\]"):
            load_external_imf_head_state_dict(self.target, both)
        self.assertEqual(load_external_imf_head_state_dict(self.target, both, prefix='ema'), 'ema.')
        self.assert_loaded()

    def test_mismatch_lists_missing_and_unexpected_keys_and_leaves_head_untouched(self):
        state = prefixed(self.source.state_dict(), 'noise_pred_net.')
        del state['noise_pred_net.time_token_proj.bias']
        del state['noise_pred_net._dummy_variable']
        state['noise_pred_net.attnres_backbone.layers.0.fn.w_extra.weight'] = torch.zeros(2, 2)
        before = {k: v.clone() for k, v in self.target.state_dict().items()}
        with self.assertRaises(ValueError) as caught:
            load_external_imf_head_state_dict(self.target, {'model': state})
        message = str(caught.exception)
        self.assertIn("missing keys: ['_dummy_variable', 'time_token_proj.bias']", message)
        self.assertIn("unexpected keys: ['attnres_backbone.layers.0.fn.w_extra.weight']", message)
        for key, value in self.target.state_dict().items():
            self.assertTrue(torch.equal(value, before[key]), key)

    def test_shape_mismatch_is_reported(self):
        wider = make_head(seed=4, n_emb=32)
        with self.assertRaisesRegex(ValueError, r'input_emb\.weight: checkpoint \(32, 4\) vs head \(16, 4\)'):
            load_external_imf_head_state_dict(self.target, wider.state_dict())

    def test_ambiguous_nested_state_dicts_are_refused(self):
        checkpoint = {'state_dicts': {'model': prefixed(self.source.state_dict(), 'model.'),
                                      'ema_model': prefixed(make_head(seed=5).state_dict(), 'model.')}}
        with self.assertRaisesRegex(ValueError, r"\['state_dicts\.model', 'state_dicts\.ema_model'\]"):
            load_external_imf_head_state_dict(self.target, checkpoint)
        load_external_imf_head_state_dict(self.target, checkpoint['state_dicts']['model'])
        self.assert_loaded()

    def test_checkpoint_without_head_weights(self):
        with self.assertRaisesRegex(ValueError, "No IMF head weights found.*'obs_encoder.w'"):
            load_external_imf_head_state_dict(self.target, {'obs_encoder.w': torch.zeros(1)})
        with self.assertRaisesRegex(ValueError, "'other.input_emb.weight'"):
            load_external_imf_head_state_dict(self.target, prefixed(self.source.state_dict(), 'model.'), prefix='other.')

    def test_pickled_python_objects_are_not_executed(self):
        path = self.save({'cfg': argparse.Namespace(lr=1.0), 'state_dict': dict(self.source.state_dict())})
        with self.assertRaisesRegex(ValueError, 'weights_only=False'):
            load_external_imf_head_state_dict(self.target, path)

    def test_missing_file(self):
        with self.assertRaisesRegex(FileNotFoundError, 'does not exist'):
            load_external_imf_head_state_dict(self.target, os.path.join(self.tmp.name, 'absent.ckpt'))


if __name__ == '__main__':
    unittest.main()
