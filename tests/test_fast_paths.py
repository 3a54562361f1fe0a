"""Fast-path switches: attention kernel choice, bf16 autocast, compiled head, eval encoder paths."""
import unittest

import pytest
import torch
import torch.nn.functional as F

from roboimi.vla.fast_paths import (
    apply_eval_fast_paths,
    attention_backends,
    precision_autocast,
    compile_head,
    fuse_conv_batchnorm,
    use_channels_last,
)
from roboimi.vla.models.heads.imf_transformer1d import IMFTransformer1D
from tests.agent_fixtures import make_agent, make_batch, make_obs

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
        with precision_autocast("bf16", CPU):
            fast = self.head(*self.inputs)
        self.assertEqual(fast.dtype, torch.bfloat16)
        torch.testing.assert_close(fast.float(), reference, atol=0.05, rtol=0.05)
        with precision_autocast("fp32", CPU):
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


EVAL_OFF = {"fuse_conv_bn": False, "channels_last": False, "compile_encoder": False, "compile_head": False}


def trained_statistics_agent():
    """A small DDPM agent in eval mode whose BatchNorms hold non-trivial running statistics and affine weights."""
    agent = make_agent(image_size=64)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in agent.vision_backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor in (module.running_mean, module.weight, module.bias):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return agent.eval()


class EvalEncoderFastPathsTest(unittest.TestCase):
    def setUp(self):
        self.agent = trained_statistics_agent()
        self.batch = make_batch(batch=2, image_size=64)
        with torch.inference_mode():
            self.reference = self.encode()

    def encode(self) -> torch.Tensor:
        with torch.inference_mode():
            return self.agent.encode_observation(self.batch["images"], self.batch["qpos"])

    def test_fused_encoder_equals_the_unfused_one_without_batchnorms(self):
        fuse_conv_batchnorm(self.agent)
        self.assertFalse(any(isinstance(m, torch.nn.BatchNorm2d) for m in self.agent.vision_backbone.modules()))
        torch.testing.assert_close(self.encode(), self.reference, atol=1e-5, rtol=1e-4)

    def test_channels_last_encoder_equals_the_default_layout(self):
        use_channels_last(self.agent)
        first_conv = self.agent.vision_backbone.rgb_encoder[0].backbone[0].weight
        self.assertTrue(first_conv.is_contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(self.encode(), self.reference, atol=1e-5, rtol=1e-4)

    def test_fusion_needs_eval_mode(self):
        with self.assertRaisesRegex(RuntimeError, "agent.eval"):
            fuse_conv_batchnorm(self.agent.train())

    def test_eval_switches_are_applied_and_validated_by_key(self):
        apply_eval_fast_paths(self.agent, dict(EVAL_OFF, fuse_conv_bn=True, channels_last=True))
        self.assertFalse(any(isinstance(m, torch.nn.BatchNorm2d) for m in self.agent.vision_backbone.modules()))
        torch.testing.assert_close(self.encode(), self.reference, atol=1e-5, rtol=1e-4)
        for key in ("compile_encoder", "fuse_conv_bn"):
            with self.assertRaisesRegex(ValueError, rf"eval.{key}='yes': use true or false"):
                apply_eval_fast_paths(self.agent, dict(EVAL_OFF, **{key: "yes"}))

    def test_rollout_actions_equal_the_unoptimized_agent(self):
        fast = trained_statistics_agent()
        apply_eval_fast_paths(fast, dict(EVAL_OFF, fuse_conv_bn=True, channels_last=True))
        for agent in (self.agent, fast):
            agent.reset()
        for step in range(4):
            torch.manual_seed(step)
            expected = self.agent.select_action(make_obs(step, size=64))
            torch.manual_seed(step)
            torch.testing.assert_close(fast.select_action(make_obs(step, size=64)), expected, atol=1e-4, rtol=1e-4)


class InferenceModeTest(unittest.TestCase):
    def test_predict_action_runs_in_inference_mode_and_equals_no_grad(self):
        agent = trained_statistics_agent()
        batch = make_batch(batch=2, image_size=64)
        noise = torch.randn(2, agent.pred_horizon, agent.action_dim)
        seen = []
        agent.noise_pred_net.register_forward_pre_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
        actions = agent.predict_action(batch, noise=noise)
        self.assertTrue(seen and all(seen))
        with torch.no_grad():
            cond = agent.encode_observation(batch["images"], batch["qpos"])
            x = noise
            agent.ddim_scheduler.set_timesteps(agent.inference_steps)
            for k in agent.ddim_scheduler.timesteps:
                x = agent.ddim_scheduler.step(agent.noise_pred_net(x, k.expand(2), cond), k, x).prev_sample
        torch.testing.assert_close(actions, agent.unnormalize_action(x))


if __name__ == "__main__":
    unittest.main()
