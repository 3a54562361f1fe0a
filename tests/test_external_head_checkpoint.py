"""Loading IMF-head weights saved by the diffusion_policy IMF-AttnRes head."""
import argparse
import os
import tempfile
import unittest

import torch

from roboimi.vla.models.heads.external_checkpoint import load_external_imf_head_state_dict
from roboimi.vla.models.heads.imf_transformer1d import IMFTransformer1D

torch.set_num_threads(1)

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
