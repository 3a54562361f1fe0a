"""IMFVLAAgent: (t, r) sampler, JVP against finite differences, iMF loss, 1..N-step inference, rollout queues."""
import functools
import math
import unittest
from unittest import mock

import torch

from roboimi.vla.agent_imf import IMFVLAAgent
from roboimi.vla.fast_paths import attention_backends
from roboimi.vla.models.backbones.resnet_diffusion import ResNetDiffusionBackbone
from roboimi.vla.models.heads.imf_transformer1d import IMFTransformer1D
from tests.agent_fixtures import ACTION_DIM, CAMS, OBS_DIM, OBS_HORIZON, PRED_HORIZON, STATS, HeadCalls, make_batch, make_obs

torch.set_num_threads(1)


def make_imf_agent(image_size=32, causal_attn=False, **kwargs):
    torch.manual_seed(0)
    backbone = ResNetDiffusionBackbone(
        input_shape=(image_size, image_size), camera_names=CAMS, spatial_softmax_num_keypoints=4
    )
    head = functools.partial(IMFTransformer1D, n_layer=1, n_head=2, n_kv_head=2, n_emb=16, causal_attn=causal_attn)
    args = dict(
        action_dim=ACTION_DIM,
        obs_dim=OBS_DIM,
        obs_horizon=OBS_HORIZON,
        pred_horizon=PRED_HORIZON,
        num_action_steps=3,
        inference_steps=1,
        camera_names=CAMS,
        normalization_stats=STATS,
    )
    args.update(kwargs)
    return IMFVLAAgent(backbone, head, **args)


def seeded_loss(agent, batch, seed=0):
    torch.manual_seed(seed)
    return agent.compute_loss(batch)


def jvp_inputs(cond_dim: int):
    """Seeded float64 (z, v, cond, r, t) for two samples; the second has r = t."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, PRED_HORIZON, ACTION_DIM, generator=g, dtype=torch.float64)
    v = torch.randn(2, PRED_HORIZON, ACTION_DIM, generator=g, dtype=torch.float64)
    cond = torch.randn(2, OBS_HORIZON, cond_dim, generator=g, dtype=torch.float64)
    return z, v, cond, torch.tensor([0.2, 0.4], dtype=torch.float64), torch.tensor([0.7, 0.4], dtype=torch.float64)


class TimeSamplerTest(unittest.TestCase):
    def test_worked_example(self):
        agent = make_imf_agent()
        x = torch.zeros(4, PRED_HORIZON, ACTION_DIM)
        draws = [torch.tensor([-1.0, 0.0, 1.0, 2.0]), torch.tensor([2.0, 1.0, 0.0, -1.0])]
        with mock.patch("torch.randn", side_effect=draws):
            t, r = agent._sample_tr(x)
        torch.testing.assert_close(t, torch.tensor([0.19782, 0.40131, 0.64566, 0.83202]), atol=1e-5, rtol=0)
        torch.testing.assert_close(r, torch.tensor([0.19782, 0.40131, 0.40131, 0.19782]), atol=1e-5, rtol=0)

    def test_first_rows_have_r_equal_t(self):
        agent = make_imf_agent()
        torch.manual_seed(1)
        t, r = agent._sample_tr(torch.zeros(7, PRED_HORIZON, ACTION_DIM, dtype=torch.float64))
        self.assertEqual((t.dtype, r.dtype), (torch.float64, torch.float64))
        self.assertTrue(torch.equal(t[:3], r[:3]))  # floor(7 * 0.5) = 3 rows
        self.assertTrue((r[3:] < t[3:]).all())
        self.assertTrue(((r > 0) & (t < 1)).all())

    def test_broadcast_batch_time(self):
        x = torch.zeros(3, PRED_HORIZON, ACTION_DIM)
        flat, view = IMFVLAAgent._broadcast_batch_time(0.25, x)
        self.assertEqual(flat.tolist(), [0.25] * 3)
        self.assertEqual(tuple(view.shape), (3, 1, 1))
        flat, view = IMFVLAAgent._broadcast_batch_time(torch.tensor([0.1, 0.2, 0.3]), x)
        torch.testing.assert_close(view[:, 0, 0], torch.tensor([0.1, 0.2, 0.3]))


class JvpTest(unittest.TestCase):
    def setUp(self):
        self.agent = make_imf_agent().double().eval()
        with torch.no_grad():  # non-zero depth-mixing queries so every path of the head matters
            for name, p in self.agent.noise_pred_net.named_parameters():
                if name.endswith("pseudo_query"):
                    p.normal_(0.0, 0.5)
        self.z, self.v, self.cond, self.r, self.t = jvp_inputs(self.agent.cond_dim)

    def central_difference(self, dr, h=1e-5):
        head = functools.partial(self.agent.noise_pred_net, cond=self.cond)
        with torch.no_grad():
            plus = head(self.z + h * self.v, self.r + h * dr, self.t + h)
            minus = head(self.z - h * self.v, self.r - h * dr, self.t - h)
        return (plus - minus) / (2 * h)

    def test_matches_finite_difference_along_v_0_1(self):
        du_dt = self.agent.time_derivative(self.z, self.r, self.t, self.v, self.cond)
        torch.testing.assert_close(du_dt, self.central_difference(dr=0.0), atol=1e-8, rtol=1e-6)
        # Moving r as well gives a different derivative, so the check pins the (v, 0, 1) tangent.
        self.assertGreater((du_dt - self.central_difference(dr=1.0)).abs().max().item(), 1e-4)

    def test_equals_torch_func_jvp(self):
        with attention_backends(False, torch.device("cpu")):  # the CPU's fused attention has no forward AD
            reference = torch.func.jvp(
                lambda z, r, t: self.agent.noise_pred_net(z, r, t, self.cond),
                (self.z, self.r, self.t),
                (self.v, torch.zeros_like(self.r), torch.ones_like(self.t)),
            )[1]
        torch.testing.assert_close(self.agent.time_derivative(self.z, self.r, self.t, self.v, self.cond), reference)

    def test_du_dt_has_no_graph_and_runs_in_train_mode_under_the_math_guard(self):
        agent = make_imf_agent().train()
        flash_enabled = []
        hook = lambda *_: flash_enabled.append(torch.backends.cuda.flash_sdp_enabled())
        agent.noise_pred_net.register_forward_pre_hook(hook)
        z, v = self.z.float().requires_grad_(), self.v.float()
        cond = self.cond.float().requires_grad_()
        du_dt = agent.time_derivative(z, self.r.float(), self.t.float(), v, cond)
        self.assertEqual(flash_enabled, [False])
        self.assertTrue(torch.isfinite(du_dt).all())
        self.assertFalse(du_dt.requires_grad)  # inputs and weights require grad, the tangent pass records nothing

    def test_compound_velocity_stops_the_gradient_of_du_dt(self):
        u = torch.ones(2, PRED_HORIZON, ACTION_DIM, requires_grad=True)
        du_dt = torch.full((2, PRED_HORIZON, ACTION_DIM), 2.0, requires_grad=True)
        velocity = self.agent._compound_velocity(u, du_dt, torch.tensor([0.5, 0.9]), torch.tensor([0.5, 0.4]))
        torch.testing.assert_close(velocity[:, 0, 0], torch.tensor([1.0, 2.0]))  # 1 + (t - r) * 2
        velocity.sum().backward()
        self.assertIsNone(du_dt.grad)
        torch.testing.assert_close(u.grad, torch.ones_like(u))


class XPredictionTest(unittest.TestCase):
    """prediction='x': the head estimates the clean chunk and u = (z - x̂) / max(t, x_prediction_min_t)."""

    def setUp(self):
        self.agent = make_imf_agent(prediction="x").double().eval()
        self.z, self.v, self.cond, self.r, self.t = jvp_inputs(self.agent.cond_dim)

    def u_by_hand(self, z, r, t):
        x_hat = self.agent.noise_pred_net(z, r, t, self.cond)
        return (z - x_hat) / t.clamp(min=1e-3)[:, None, None]

    def test_u_is_the_velocity_towards_the_predicted_data(self):
        with torch.no_grad():
            torch.testing.assert_close(self.agent.average_velocity(self.z, self.r, self.t, self.cond), self.u_by_hand(self.z, self.r, self.t))
            tiny_t = torch.tensor([1e-6, 0.5], dtype=torch.float64)  # clamped to 1e-3, u stays finite
            torch.testing.assert_close(self.agent.average_velocity(self.z, self.r * 0, tiny_t, self.cond), self.u_by_hand(self.z, self.r * 0, tiny_t))

    def test_jvp_matches_finite_difference_of_the_parameterized_u(self):
        du_dt = self.agent.time_derivative(self.z, self.r, self.t, self.v, self.cond)
        h = 1e-5
        with torch.no_grad():
            plus = self.u_by_hand(self.z + h * self.v, self.r, self.t + h)
            minus = self.u_by_hand(self.z - h * self.v, self.r, self.t - h)
        torch.testing.assert_close(du_dt, (plus - minus) / (2 * h), atol=1e-7, rtol=1e-6)

    def test_one_step_returns_the_head_estimate(self):
        agent = make_imf_agent(prediction="x", inference_steps=1).eval()
        batch = make_batch(batch=3)
        noise = torch.randn(3, PRED_HORIZON, ACTION_DIM)
        with torch.no_grad():
            cond = agent.encode_observation(batch["images"], batch["qpos"])
            expected = agent.unnormalize_action(agent.noise_pred_net(noise, 0.0, 1.0, cond))
        torch.testing.assert_close(agent.predict_action(batch, noise=noise), expected, atol=1e-5, rtol=1e-5)

    def test_loss_differs_from_u_prediction_on_the_same_draws(self):
        batch = make_batch()
        loss_u = seeded_loss(make_imf_agent(prediction="u").train(), batch)
        loss_x = seeded_loss(make_imf_agent(prediction="x").train(), batch)
        self.assertTrue(torch.isfinite(loss_x))
        self.assertNotAlmostEqual(loss_u.item(), loss_x.item(), places=3)

    def test_data_space_loss_is_the_data_error_on_r_equal_t_rows(self):
        # With every row at r = t, V = u = (z - x̂) / t, so t * (V - (e - x)) = x - x̂: the data-space loss is the
        # plain MSE of the clean-chunk estimate, and the velocity-space loss the same errors over t^2.
        batch = make_batch(batch=4)
        losses = {}
        for space in ("data", "velocity"):
            agent = make_imf_agent(prediction="x", data_proportion=1.0, loss_space=space).eval()
            losses[space] = seeded_loss(agent, batch)
        torch.manual_seed(0)
        x = agent.normalize_action(batch["action"])
        cond = agent.encode_observation(batch["images"], batch["qpos"])
        e = torch.randn_like(x)
        t, _ = agent._sample_tr(x)
        t_view = t[:, None, None]
        with torch.no_grad():
            x_hat = agent.noise_pred_net((1 - t_view) * x + t_view * e, t, t, cond)
            torch.testing.assert_close(losses["data"], ((x_hat - x) ** 2).mean(), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(losses["velocity"], (((x_hat - x) / t_view) ** 2).mean(), atol=1e-6, rtol=1e-5)

    def test_unknown_loss_space_message(self):
        with self.assertRaisesRegex(ValueError, r"Unsupported IMF loss_space: 'noise'.*agent.loss_space"):
            make_imf_agent(prediction="x", loss_space="noise")

    def test_unknown_prediction_and_clamp_messages(self):
        with self.assertRaisesRegex(ValueError, r"Unsupported IMF prediction: 'eps'.*agent.prediction"):
            make_imf_agent(prediction="eps")
        with self.assertRaisesRegex(ValueError, r"x_prediction_min_t=0.0 must lie in \(0, 1\]"):
            make_imf_agent(prediction="x", x_prediction_min_t=0.0)


class LossTest(unittest.TestCase):
    def test_finite_scalar_with_gradients_on_head_and_backbone(self):
        agent = make_imf_agent(image_size=64).train()  # 64 px: a 2x2 feature map, so the trunk gets gradient
        loss = seeded_loss(agent, make_batch(batch=3, image_size=64))
        self.assertEqual(loss.shape, ())
        self.assertTrue(torch.isfinite(loss))
        loss.backward()
        head, encoder = agent.noise_pred_net, agent.vision_backbone.rgb_encoder[0]
        for param in (head.input_emb.weight, head.cond_obs_emb.weight, encoder.out.weight, encoder.backbone[0].weight):
            self.assertGreater(param.grad.abs().sum().item(), 0)

    def test_padded_steps_do_not_change_the_loss(self):
        # Causal attention keeps the padded tail out of the earlier steps' outputs, so only the loss mask
        # decides whether the padded values count.
        agent = make_imf_agent(causal_attn=True).train()
        batch = make_batch()
        batch["action_is_pad"][1, 4:] = True
        base = seeded_loss(agent, batch).item()

        padded_changed = dict(batch, action=batch["action"].clone())
        padded_changed["action"][1, 4:] -= 50.0
        self.assertEqual(seeded_loss(agent, padded_changed).item(), base)

        real_changed = dict(batch, action=batch["action"].clone())
        real_changed["action"][1, 1] -= 50.0
        self.assertNotAlmostEqual(seeded_loss(agent, real_changed).item(), base, places=4)

    def test_split_rows_give_the_loss_and_gradients_of_the_jvp_on_every_row(self):
        """One forward for u, the v pass and a graph-free JVP on the r < t rows only; with dropout off the loss and
        its gradients are those of one JVP with autograd on every row."""
        batch = make_batch(batch=4)
        for proportion in (0.0, 0.5, 1.0):
            for prediction in ("u", "x"):
                with self.subTest(data_proportion=proportion, prediction=prediction):
                    agent = make_imf_agent(data_proportion=proportion, prediction=prediction).eval()
                    loss = seeded_loss(agent, batch)
                    grads = torch.autograd.grad(loss, list(agent.noise_pred_net.parameters())[1:])

                    torch.manual_seed(0)  # every row through one JVP with autograd, as the objective is written
                    x = agent.normalize_action(batch["action"])
                    cond = agent.encode_observation(batch["images"], batch["qpos"])
                    e = torch.randn_like(x)
                    t, r = agent._sample_tr(x)
                    z_t = (1 - t[:, None, None]) * x + t[:, None, None] * e
                    with torch.no_grad():
                        v = agent.average_velocity(z_t, t, t, cond)
                    with attention_backends(False, torch.device("cpu")):
                        u, du_dt = torch.func.jvp(
                            lambda z, r_, t_: agent.average_velocity(z, r_, t_, cond),
                            (z_t, r, t),
                            (v, torch.zeros_like(r), torch.ones_like(t)),
                        )
                    error = u + (t - r)[:, None, None] * du_dt.detach() - (e - x)
                    expected = agent._masked_mean(error**2, batch["action_is_pad"])
                    expected_grads = torch.autograd.grad(expected, list(agent.noise_pred_net.parameters())[1:])

                    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
                    for grad, expected_grad in zip(grads, expected_grads):
                        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)

    def test_elementwise_losses(self):
        error = torch.tensor([0.0, 1.0, 2.0])
        torch.testing.assert_close(make_imf_agent()._elementwise_loss(error), torch.tensor([0.0, 1.0, 4.0]))
        huber = make_imf_agent(loss_type="pseudo_huber")._elementwise_loss(error)
        torch.testing.assert_close(huber, torch.tensor([0.0, math.sqrt(2) - 1, math.sqrt(5) - 1]))
        wide = make_imf_agent(loss_type="pseudo_huber", pseudo_huber_delta=2.0)._elementwise_loss(error)
        torch.testing.assert_close(wide[2], torch.tensor(4 * (math.sqrt(2) - 1)))

    def test_pseudo_huber_is_below_mse_on_the_same_draws(self):
        batch = make_batch()
        mse = seeded_loss(make_imf_agent().train(), batch).item()
        huber = seeded_loss(make_imf_agent(loss_type="pseudo_huber").train(), batch).item()
        self.assertGreater(huber, 0.0)
        self.assertLess(huber, mse / 2)  # pseudo-Huber <= error^2 / 2 elementwise

    def test_unknown_loss_type_message(self):
        with self.assertRaises(ValueError) as ctx:
            make_imf_agent(loss_type="l1")
        self.assertEqual(
            str(ctx.exception), "Unsupported IMF-AttnRes loss_type: 'l1'. Allowed values: 'mse', 'pseudo_huber'."
        )


class InferenceTest(unittest.TestCase):
    def test_one_step_is_one_head_call_from_noise_to_data(self):
        agent = make_imf_agent(inference_steps=1).eval()
        batch = make_batch(batch=3)
        noise = torch.randn(3, PRED_HORIZON, ACTION_DIM)
        recorder = HeadCalls(agent.noise_pred_net)
        actions = agent.predict_action(batch, noise=noise)
        self.assertEqual(len(recorder.calls), 1)
        _, r, t, _ = recorder.calls[0]
        self.assertEqual((r.tolist(), t.tolist()), ([0.0] * 3, [1.0] * 3))

        with torch.no_grad():
            cond = agent.encode_observation(batch["images"], batch["qpos"])
            expected = agent.unnormalize_action(noise - agent.noise_pred_net(noise, 0.0, 1.0, cond))
        self.assertEqual(tuple(actions.shape), (3, PRED_HORIZON, ACTION_DIM))
        torch.testing.assert_close(actions, expected)

    def test_n_steps_walk_the_linspace_grid(self):
        agent = make_imf_agent(inference_steps=4).eval()
        recorder = HeadCalls(agent.noise_pred_net)
        agent.predict_action(make_batch(batch=2))
        pairs = [(args[2][0].item(), args[1][0].item()) for args in recorder.calls]  # (t, r)
        self.assertEqual(len(pairs), 4)
        for (t, r), (t_ref, r_ref) in zip(pairs, [(1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)]):
            self.assertAlmostEqual(t, t_ref, places=6)
            self.assertAlmostEqual(r, r_ref, places=6)

    def test_two_steps_compose_mean_velocity_jumps(self):
        agent = make_imf_agent(inference_steps=2).eval()
        batch = make_batch(batch=2)
        noise = torch.randn(2, PRED_HORIZON, ACTION_DIM)
        with torch.no_grad():
            cond = agent.encode_observation(batch["images"], batch["qpos"])
            head = agent.noise_pred_net
            z_half = noise - 0.5 * head(noise, 0.5, 1.0, cond)
            expected = agent.unnormalize_action(z_half - 0.5 * head(z_half, 0.0, 0.5, cond))
        torch.testing.assert_close(agent.predict_action(batch, noise=noise), expected)

    def test_num_steps_overrides_inference_steps_and_predict_is_sample_then_unnormalize(self):
        agent = make_imf_agent(inference_steps=1).eval()
        recorder = HeadCalls(agent.noise_pred_net)
        batch = make_batch(batch=2)
        noise = torch.randn(2, PRED_HORIZON, ACTION_DIM)
        actions = agent.predict_action(batch, num_steps=3, noise=noise)
        self.assertEqual(len(recorder.calls), 3)
        with torch.no_grad():
            cond = agent.encode_observation(batch["images"], batch["qpos"])
        torch.testing.assert_close(actions, agent.unnormalize_action(agent.sample_actions(cond, 3, noise)))
        self.assertEqual(agent.inference_steps, 1)

    def test_one_step_defaults(self):
        agent = make_imf_agent().eval()
        z = torch.randn(2, PRED_HORIZON, ACTION_DIM)
        cond = torch.randn(2, OBS_HORIZON, agent.cond_dim)
        with torch.no_grad():
            torch.testing.assert_close(agent._sample_one_step(z, cond), z - agent.noise_pred_net(z, 0.0, 1.0, cond))


class QueueTest(unittest.TestCase):
    def test_replans_every_num_action_steps_and_executes_the_current_window(self):
        agent = make_imf_agent(inference_steps=1, num_action_steps=3).eval()
        recorder = HeadCalls(agent.noise_pred_net)
        agent.reset()
        torch.manual_seed(5)
        executed, calls_after = [], []
        for step in range(5):
            executed.append(agent.select_action(make_obs(step)))
            calls_after.append(len(recorder.calls))
        self.assertEqual(calls_after, [1, 1, 1, 2, 2])
        self.assertEqual(tuple(executed[0].shape), (ACTION_DIM,))

        agent.reset()
        agent._populate_queues(make_obs(0))
        batch = agent._prepare_observation_batch()
        self.assertEqual(batch["qpos"][0, :, 0].tolist(), [0.0] * OBS_HORIZON)
        torch.manual_seed(5)
        chunk = agent.predict_action(batch)
        torch.testing.assert_close(torch.stack(executed[:3]), chunk[0, OBS_HORIZON - 1 : OBS_HORIZON + 2])

    def test_frame_history_reuses_one_buffer_and_shifts_in_order(self):
        agent = make_imf_agent(obs_horizon=3, pred_horizon=8).eval()
        agent.reset()
        agent._populate_queues(make_obs(1))
        first = agent._prepare_observation_batch()["images"][CAMS[0]]
        self.assertEqual(first[0, :, 0, 0, 0].tolist(), [1, 1, 1])  # the first frame fills the history
        for value in (2, 3, 4):
            agent._populate_queues(make_obs(value))
        latest = agent._prepare_observation_batch()["images"][CAMS[0]]
        self.assertEqual(latest[0, :, 0, 0, 0].tolist(), [2, 3, 4])
        self.assertEqual(latest.data_ptr(), first.data_ptr())  # no allocation per step


if __name__ == "__main__":
    unittest.main()
