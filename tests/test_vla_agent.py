"""VLAAgent: normalization, condition layout, DDPM loss masking, DDIM inference, rollout queues, checks."""
import unittest

import numpy as np
import torch

from tests.agent_fixtures import (
    ACTION_DIM, CAMS, OBS_DIM, OBS_HORIZON, PRED_HORIZON, STATS, HeadCalls, make_agent, make_batch,
    make_obs,
)

torch.set_num_threads(1)


class NormalizationTest(unittest.TestCase):
    def test_hand_computed_values_and_round_trip(self):
        agent = make_agent()
        qpos = torch.tensor([[5.0, 2.0, 5.0], [0.0, -1.0, 5.0]])
        expected = torch.tensor([[0.0, 1.0, -1.0], [-1.0, -0.5, -1.0]])  # constant dim -> -1
        torch.testing.assert_close(agent._normalize_qpos(qpos), expected)
        action = torch.tensor([[15.0, -2.0], [10.0, -5.0]])
        torch.testing.assert_close(agent.normalize_action(action), torch.tensor([[0.0, 0.5], [-1.0, -1.0]]))
        torch.testing.assert_close(agent.unnormalize_action(agent.normalize_action(action)), action)

    def test_stats_round_trip_through_getter_and_state_dict(self):
        agent = make_agent()
        stats = agent.get_normalization_stats()
        self.assertEqual(set(stats), {"qpos_min", "qpos_max", "action_min", "action_max"})
        torch.testing.assert_close(stats["action_max"], torch.tensor([20.0, -1.0]))
        self.assertEqual(stats["qpos_min"].device.type, "cpu")
        fresh = make_agent(stats=None)
        fresh.load_state_dict(agent.state_dict())
        torch.testing.assert_close(fresh.qpos_max, torch.tensor([10.0, 2.0, 5.0]))
        other = make_agent(stats=None)
        other.set_normalization_stats(stats)
        torch.testing.assert_close(other.action_min, torch.tensor([10.0, -5.0]))

    def test_missing_stats_raise(self):
        agent = make_agent(stats=None)
        self.assertTrue(torch.isnan(agent.qpos_min).all())
        with self.assertRaisesRegex(RuntimeError, "set_normalization_stats"):
            agent.compute_loss(make_batch())
        with self.assertRaisesRegex(RuntimeError, "checkpoint"):
            agent.eval().predict_action(make_batch())

    def test_wrong_stat_shape_raises(self):
        bad = dict(STATS, action_min=np.zeros(5, dtype=np.float32))
        with self.assertRaisesRegex(ValueError, r"action_min.*\(5,\).*\(2,\)"):
            make_agent(stats=bad)


class ConditionTest(unittest.TestCase):
    def test_visual_features_first_then_normalized_state(self):
        agent = make_agent().eval()
        batch = make_batch()
        cond = agent.encode_observation(batch["images"], batch["qpos"])
        self.assertEqual(agent.cond_dim, 2 * 8 + OBS_DIM)
        self.assertEqual(tuple(cond.shape), (2, OBS_HORIZON, agent.cond_dim))
        pixels = {cam: batch["images"][cam].float() / 255 for cam in CAMS}
        torch.testing.assert_close(cond[..., :16], agent.vision_backbone(pixels))
        torch.testing.assert_close(cond[..., 16:], agent._normalize_qpos(batch["qpos"]))

    def test_batch_errors(self):
        agent = make_agent()
        batch = make_batch()
        with self.assertRaisesRegex(ValueError, r"\['front'\].*\['top'\]"):
            agent.encode_observation({"top": batch["images"]["top"]}, batch["qpos"])
        with self.assertRaisesRegex(ValueError, "obs_dim=3"):
            agent.encode_observation(batch["images"], batch["qpos"][..., :2])


class LossTest(unittest.TestCase):
    def test_masked_mean_hand_computed(self):
        agent = make_agent()
        per_step = torch.arange(1.0, PRED_HORIZON + 1).view(1, PRED_HORIZON, 1).expand(2, PRED_HORIZON, ACTION_DIM)
        pad = torch.zeros(2, PRED_HORIZON, dtype=torch.bool)
        pad[:, 2:] = True  # only steps with values 1 and 2 count
        self.assertAlmostEqual(agent._masked_mean(per_step, pad).item(), 1.5)
        self.assertAlmostEqual(agent._masked_mean(per_step, None).item(), 4.5)
        self.assertEqual(agent._masked_mean(per_step, torch.ones_like(pad)).item(), 0.0)

    def loss(self, agent, batch, seed=0):
        torch.manual_seed(seed)
        return agent.compute_loss(batch)

    def test_padded_steps_do_not_change_the_loss(self):
        # Causal attention (the config default) keeps the padded tail out of the earlier steps' predictions,
        # so only the loss mask decides whether the padded values count.
        agent = make_agent().train()
        batch = make_batch()
        batch["action_is_pad"][0, 5:] = True
        base = self.loss(agent, batch)
        self.assertEqual(base.shape, ())
        self.assertTrue(torch.isfinite(base))

        padded_changed = dict(batch, action=batch["action"].clone())
        padded_changed["action"][0, 5:] += 100.0
        self.assertEqual(self.loss(agent, padded_changed).item(), base.item())

        real_changed = dict(batch, action=batch["action"].clone())
        real_changed["action"][0, 2] += 100.0
        self.assertNotAlmostEqual(self.loss(agent, real_changed).item(), base.item(), places=4)

    def test_loss_trains_head_and_backbone(self):
        agent = make_agent().train()
        self.loss(agent, make_batch(batch=3)).backward()
        self.assertGreater(agent.noise_pred_net.input_emb.weight.grad.abs().sum().item(), 0)
        self.assertGreater(agent.vision_backbone.rgb_encoder[0].out.weight.grad.abs().sum().item(), 0)


class InferenceTest(unittest.TestCase):
    def test_ddim_makes_inference_steps_head_calls(self):
        agent = make_agent(inference_steps=4).eval()
        recorder = HeadCalls(agent.noise_pred_net)
        agent.predict_action(make_batch(batch=2))
        self.assertEqual(len(recorder.calls), 4)
        # 100 training steps, 4 DDIM steps: k = 75, 50, 25, 0, one per sample.
        self.assertEqual([args[1].tolist() for args in recorder.calls], [[75, 75], [50, 50], [25, 25], [0, 0]])
        recorder.calls.clear()
        agent.predict_action(make_batch(batch=2), num_steps=2)  # a per-call step count, inference_steps untouched
        self.assertEqual([args[1].tolist() for args in recorder.calls], [[50, 50], [0, 0]])
        self.assertEqual(agent.inference_steps, 4)

    def test_full_chunk_is_unnormalized(self):
        agent = make_agent().eval()
        actions = agent.predict_action(make_batch(batch=3))
        self.assertEqual(tuple(actions.shape), (3, PRED_HORIZON, ACTION_DIM))
        # clip_sample keeps the normalized sample in [-1, 1], i.e. inside [action_min, action_max].
        self.assertTrue(((actions[..., 0] >= 10 - 1e-4) & (actions[..., 0] <= 20 + 1e-4)).all())
        self.assertTrue(((actions[..., 1] >= -5 - 1e-4) & (actions[..., 1] <= -1 + 1e-4)).all())

    def test_given_noise_makes_it_deterministic(self):
        agent = make_agent().eval()
        batch = make_batch()
        noise = torch.randn(2, PRED_HORIZON, ACTION_DIM)
        torch.testing.assert_close(agent.predict_action(batch, noise=noise), agent.predict_action(batch, noise=noise))
        with self.assertRaisesRegex(ValueError, "noise has shape"):
            agent.predict_action(batch, noise=noise[:, :4])

    def test_noise_scale_scales_each_fresh_draw(self):
        batch = make_batch()
        draw = torch.randn(2, PRED_HORIZON, ACTION_DIM, generator=torch.Generator().manual_seed(5))
        for scale in (0.0, 0.5):
            with self.subTest(noise_scale=scale):
                agent = make_agent(noise_scale=scale).eval()
                torch.manual_seed(5)
                sampled = agent.predict_action(batch)
                torch.testing.assert_close(sampled, agent.predict_action(batch, noise=scale * draw))
        # A caller's own noise is used as given.
        agent = make_agent(noise_scale=0.0).eval()
        self.assertFalse(torch.allclose(agent.predict_action(batch, noise=draw), agent.predict_action(batch)))


class QueueTest(unittest.TestCase):
    def test_first_observation_fills_the_history(self):
        agent = make_agent()
        agent.reset()
        agent._populate_queues(make_obs(7))
        batch = agent._prepare_observation_batch()
        self.assertEqual(tuple(batch["images"]["top"].shape), (1, OBS_HORIZON, 3, 32, 32))
        self.assertEqual(batch["images"]["top"].dtype, torch.uint8)
        self.assertEqual(batch["qpos"][0, :, 0].tolist(), [7.0, 7.0])
        agent._populate_queues(make_obs(8))
        agent._populate_queues(make_obs(9))
        batch = agent._prepare_observation_batch()
        self.assertEqual(batch["qpos"][0, :, 0].tolist(), [8.0, 9.0])
        self.assertEqual(batch["images"]["front"][0, :, 1, 5, 5].tolist(), [8, 9])

    def test_flipped_frames_are_accepted(self):
        agent = make_agent()
        agent.reset()
        frame = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
        obs = make_obs(0)
        obs["images"] = {cam: frame[::-1] for cam in CAMS}  # negative-stride view, as from a flipped render
        agent._populate_queues(obs)
        images = agent._prepare_observation_batch()["images"]
        expected = torch.from_numpy(frame[::-1].copy()).permute(2, 0, 1)
        self.assertTrue(torch.equal(images["top"][0, 1], expected))

    def test_frames_of_another_size_are_refused_naming_both_sizes(self):
        agent = make_agent()
        agent.reset()
        obs = make_obs(0)
        obs["images"] = {cam: np.full((48, 40, 3), 200, dtype=np.uint8) for cam in CAMS}
        with self.assertRaisesRegex(ValueError, r"'top' has frames of \[48, 40\].*takes \[32, 32\]"):
            agent._populate_queues(obs)

    def test_replans_every_num_action_steps_and_executes_the_current_window(self):
        agent = make_agent(inference_steps=2).eval()
        recorder = HeadCalls(agent.noise_pred_net)
        agent.reset()
        torch.manual_seed(3)
        executed, calls_after = [], []
        for step in range(7):
            action = agent.select_action(make_obs(step))
            self.assertEqual(action.dtype, torch.float32)
            self.assertEqual(action.device.type, "cpu")
            self.assertEqual(tuple(action.shape), (ACTION_DIM,))
            self.assertGreater(agent.last_preprocess_ms, 0.0)
            executed.append(action)
            calls_after.append(len(recorder.calls))
        # Two DDIM calls per plan; plans at steps 0, 3 and 6.
        self.assertEqual(calls_after, [2, 2, 2, 4, 4, 4, 6])

        agent.reset()
        agent._populate_queues(make_obs(0))
        torch.manual_seed(3)
        chunk = agent.predict_action(agent._prepare_observation_batch())
        torch.testing.assert_close(torch.stack(executed[:3]), chunk[0, OBS_HORIZON - 1 : OBS_HORIZON - 1 + 3])

    def test_each_frame_is_encoded_once_and_before_the_plan_that_needs_it(self):
        agent = make_agent(inference_steps=2).eval()  # obs_horizon 2, 3 executed actions: plans at steps 0 and 3
        frames_per_encoding = []
        agent.vision_backbone.register_forward_pre_hook(lambda _, args: frames_per_encoding.append(args[0]["top"].shape[1]))
        agent.reset()
        torch.manual_seed(4)
        executed = [agent.select_action(make_obs(step)) for step in range(4)]
        # Step 0 encodes the history (its first frame twice), step 2 its own frame ahead of the plan at step 3,
        # which then encodes only frame 3.
        self.assertEqual(frames_per_encoding, [2, 1, 1])

        torch.manual_seed(4)
        noise = [torch.randn(1, PRED_HORIZON, ACTION_DIM) for _ in range(2)]  # the draws of the two plans
        frames = [make_obs(step) for step in (2, 3)]
        batch = {
            "images": {cam: torch.stack([torch.from_numpy(f["images"][cam]) for f in frames]).permute(0, 3, 1, 2)[None] for cam in CAMS},
            "qpos": torch.tensor(np.stack([f["qpos"] for f in frames]), dtype=torch.float32)[None],
        }
        torch.testing.assert_close(executed[3], agent.predict_action(batch, noise=noise[1])[0, OBS_HORIZON - 1])

    def test_temporal_ensembling_replans_every_step_and_averages_the_chunks(self):
        agent = make_agent(inference_steps=1, temporal_ensemble_coeff=0.0).eval()  # 0: a plain mean
        recorder = HeadCalls(agent.noise_pred_net)
        agent.reset()
        torch.manual_seed(5)
        executed = [agent.select_action(make_obs(step)) for step in range(3)]
        self.assertEqual(len(recorder.calls), 3)  # one plan per step, whatever num_action_steps says

        # The same plans by hand: chunk s covers steps s, s + 1, ... from index obs_horizon - 1 of the prediction.
        agent.reset()
        torch.manual_seed(5)
        chunks = []
        for step in range(3):
            agent._populate_queues(make_obs(step))
            chunks.append(agent.predict_action(agent._prepare_observation_batch())[0, OBS_HORIZON - 1 :])
        expected = (chunks[0][2] + chunks[1][1] + chunks[2][0]) / 3
        torch.testing.assert_close(executed[2], expected)
        self.assertFalse(torch.allclose(executed[2], chunks[2][0]))  # not just the newest plan

    def test_reset_starts_a_new_plan(self):
        agent = make_agent(inference_steps=1).eval()
        recorder = HeadCalls(agent.noise_pred_net)
        agent.reset()
        agent.select_action(make_obs(0))
        agent.reset()
        agent.select_action(make_obs(1))
        self.assertEqual(len(recorder.calls), 2)

    def test_observation_errors(self):
        agent = make_agent()
        agent.reset()
        obs = make_obs(0)
        with self.assertRaisesRegex(ValueError, r"\['front'\].*\['top'\]"):
            agent.select_action({"qpos": obs["qpos"], "images": {"top": obs["images"]["top"]}})
        with self.assertRaisesRegex(ValueError, r"\(3,\)"):
            agent.select_action(dict(obs, qpos=np.zeros(4)))
        with self.assertRaisesRegex(ValueError, "uint8"):
            agent.select_action(dict(obs, images={cam: np.zeros((32, 32, 3), np.float32) for cam in CAMS}))


class ConstructorTest(unittest.TestCase):
    def test_num_action_steps_limit(self):
        make_agent(num_action_steps=PRED_HORIZON - OBS_HORIZON + 1)
        with self.assertRaisesRegex(ValueError, r"num_action_steps=8 .* = 7"):
            make_agent(num_action_steps=8)

    def test_negative_noise_scale_is_refused_naming_the_key(self):
        with self.assertRaisesRegex(ValueError, r"noise_scale=-0.1 must be >= 0 \(agent.noise_scale"):
            make_agent(noise_scale=-0.1)

    def test_camera_names_must_match_the_backbone(self):
        with self.assertRaisesRegex(ValueError, r"\['top', 'front'\].*\['front', 'top'\]"):
            make_agent(backbone_cams=("front", "top"))

    def test_head_receives_the_condition_width(self):
        agent = make_agent()
        head = agent.noise_pred_net
        self.assertEqual(head.cond_obs_emb.in_features, 2 * 8 + OBS_DIM)
        self.assertEqual((head.horizon, head.n_obs_steps), (PRED_HORIZON, OBS_HORIZON))
        self.assertEqual((head.input_emb.in_features, head.head.out_features), (ACTION_DIM, ACTION_DIM))
        self.assertTrue(any(k.startswith("noise_pred_net.") for k in agent.state_dict()))


if __name__ == "__main__":
    unittest.main()
