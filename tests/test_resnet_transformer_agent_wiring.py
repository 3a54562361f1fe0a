"""Hydra wiring of both agents: composed configs instantiate into an agent whose head matches the condition."""
import unittest
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue
from torch import nn

from roboimi.vla.agent import VLAAgent
from roboimi.vla.agent_imf import IMFVLAAgent
from roboimi.vla.models.heads.imf_transformer1d import IMFTransformer1D
from roboimi.vla.models.heads.transformer1d import Transformer1D

torch.set_num_threads(1)

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "roboimi" / "vla" / "conf")
TINY = ["agent.head.n_layer=2", "agent.head.n_emb=64", "agent.obs_dim=14", "agent.action_dim=14", "data.image_shape=[32,32]"]


def compose_config(agent: str, overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("config", overrides=[f"agent={agent}", *overrides])


class AgentWiringTest(unittest.TestCase):
    def check_agent(self, agent_name, agent_cls, head_cls, num_cond_tokens):
        agent = instantiate(compose_config(agent_name, TINY).agent)
        self.assertIs(type(agent), agent_cls)
        head, backbone = agent.noise_pred_net, agent.vision_backbone
        self.assertIsInstance(head, head_cls)
        self.assertEqual(backbone.camera_names, ("r_vis", "top", "front"))
        self.assertEqual(agent.cond_dim, 3 * 64 + 14)
        self.assertEqual(agent.cond_dim, backbone.num_cameras * backbone.output_dim + 14)
        self.assertEqual(head.cond_dim, agent.cond_dim)
        self.assertEqual(head.cond_obs_emb.in_features, agent.cond_dim)
        self.assertEqual((head.n_obs_steps, head.horizon), (agent.obs_horizon, agent.pred_horizon))
        self.assertEqual((agent.obs_horizon, agent.pred_horizon, agent.num_action_steps), (2, 16, 8))
        self.assertEqual(head.T_cond, num_cond_tokens)
        self.assertIsInstance(backbone.rgb_encoder, nn.ModuleList)
        self.assertEqual(len(backbone.rgb_encoder), 3)

        images = {cam: torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8) for cam in backbone.camera_names}
        agent.set_normalization_stats(
            {"qpos_min": -torch.ones(14), "qpos_max": torch.ones(14), "action_min": -torch.ones(14), "action_max": torch.ones(14)}
        )
        cond = agent.eval().encode_observation(images, torch.zeros(2, 2, 14))
        self.assertEqual(tuple(cond.shape), (2, agent.obs_horizon, agent.cond_dim))
        return agent

    def test_resnet_transformer(self):
        agent = self.check_agent("resnet_transformer", VLAAgent, Transformer1D, num_cond_tokens=1 + 2)
        self.assertEqual(agent.inference_steps, 10)

    def test_resnet_imf_attnres(self):
        agent = self.check_agent("resnet_imf_attnres", IMFVLAAgent, IMFTransformer1D, num_cond_tokens=2 + 2)
        self.assertEqual((agent.inference_steps, agent.loss_type), (1, "mse"))
        self.assertEqual((agent.p_mean, agent.p_std, agent.data_proportion), (-0.4, 1.0, 0.5))
        # RoPE table covers [r, t] + 2 obs tokens + 16 action tokens.
        self.assertEqual(agent.noise_pred_net.attnres_backbone.rope_freqs.shape[0], 20)

    def test_shared_encoder_and_camera_names_follow_the_data(self):
        overrides = [*TINY, "agent.vision_backbone.use_separate_rgb_encoder_per_camera=false", "data.camera_names=[top,front]"]
        agent = instantiate(compose_config("resnet_imf_attnres", overrides).agent)
        self.assertNotIsInstance(agent.vision_backbone.rgb_encoder, nn.ModuleList)
        self.assertEqual(agent.camera_names, ("top", "front"))
        self.assertEqual(agent.vision_backbone.camera_names, ("top", "front"))
        self.assertEqual(agent.cond_dim, 2 * 64 + 14)

    def test_dims_are_mandatory(self):
        cfg = compose_config("resnet_transformer", ["data.image_shape=[32,32]"])
        with self.assertRaises(MissingMandatoryValue):
            instantiate(cfg.agent)

    def test_missing_image_shape_names_the_key(self):
        cfg = compose_config("resnet_transformer", TINY[:-1])
        with self.assertRaisesRegex(Exception, r"data\.image_shape"):
            instantiate(cfg.agent)


class ConfigDefaultsTest(unittest.TestCase):
    def test_baseline_defaults(self):
        agent = compose_config("resnet_transformer").agent
        self.assertEqual(agent._target_, "roboimi.vla.agent.VLAAgent")
        self.assertEqual(
            {k: agent[k] for k in ("num_train_timesteps", "beta_schedule", "clip_sample", "prediction_type")},
            {"num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "prediction_type": "epsilon"},
        )
        head = agent.head
        self.assertTrue(head._partial_)
        self.assertEqual(
            (head.n_layer, head.n_head, head.n_emb, head.p_drop_emb, head.p_drop_attn, head.causal_attn),
            (8, 4, 256, 0.0, 0.3, True),
        )

    def test_imf_defaults(self):
        agent = compose_config("resnet_imf_attnres").agent
        self.assertEqual(agent._target_, "roboimi.vla.agent_imf.IMFVLAAgent")
        self.assertEqual((agent.pseudo_huber_delta, agent.loss_type), (1.0, "mse"))
        head = agent.head
        self.assertTrue(head._partial_)
        self.assertEqual(
            (head.n_layer, head.n_head, head.n_kv_head, head.n_emb, head.p_drop_emb, head.p_drop_attn),
            (12, 8, 8, 384, 0.1, 0.1),
        )
        self.assertEqual((head.backbone_type, head.causal_attn, head.attn_res_eps), ("attnres_full", False, 1e-6))

    def test_backbone_defaults(self):
        backbone = compose_config("resnet_transformer").agent.vision_backbone
        self.assertEqual(backbone._target_, "roboimi.vla.models.backbones.resnet_diffusion.ResNetDiffusionBackbone")
        self.assertIsNone(backbone.pretrained_backbone_weights)
        self.assertEqual(
            (backbone.spatial_softmax_num_keypoints, backbone.freeze_backbone, backbone.use_group_norm),
            (32, False, False),
        )
        self.assertEqual(list(backbone.camera_names), ["r_vis", "top", "front"])


if __name__ == "__main__":
    unittest.main()


class CpuImageRecipeWiringTest(unittest.TestCase):
    """agent=image_* data=sim_transfer_top train=image_cpu: the state recipes' heads on one camera's keypoints."""

    def test_recipe_composes_into_the_normalized_small_trunk_with_a_learned_temperature(self):
        for agent_name, agent_cls in (("image_imf_attnres", IMFVLAAgent), ("image_transformer", VLAAgent)):
            with self.subTest(agent=agent_name):
                cfg = compose_config(
                    agent_name, ["data=sim_transfer_top", "train=image_cpu", "agent.obs_dim=14", "agent.action_dim=14",
                                 "data.image_shape=[96,96]"]
                )
                agent = instantiate(cfg.agent)
                self.assertIs(type(agent), agent_cls)
                self.assertEqual(agent.camera_names, ("top",))
                self.assertEqual(list(cfg.data.state_keys), ["qpos"])  # the cube is seen, not given
                encoder = agent.vision_backbone.rgb_encoder[0]
                self.assertEqual(sum(isinstance(m, nn.GroupNorm) for m in encoder.backbone), 3)
                self.assertAlmostEqual(encoder.pool.log_inverse_temperature.exp().item(), 10.0, places=4)
                self.assertEqual(agent.noise_pred_net.cond_dim, 64 + 14)

    def test_the_insertion_pixel_data_reads_the_top_camera_and_the_joint_state_only(self):
        cfg = compose_config(
            "image_imf_attnres", ["data=sim_insertion_top", "train=image_cpu", "agent.obs_dim=14", "agent.action_dim=14",
                                  "data.image_shape=[96,96]"]
        )
        self.assertEqual(cfg.data.task, "sim_insertion")
        self.assertEqual(list(cfg.data.camera_names), ["top"])
        self.assertEqual(list(cfg.data.state_keys), ["qpos"])  # the peg and socket are seen, not given
        self.assertEqual(instantiate(cfg.agent).camera_names, ("top",))
