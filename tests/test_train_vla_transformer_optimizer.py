"""Optimizer param groups built by train_vla for both heads, and the warmup + cosine LR schedule."""
import math
import unittest

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from roboimi.vla.models.heads.attnres_transformer_components import AttnResOperator, RMSNorm
from roboimi.vla.training.optim import build_lr_scheduler, build_param_groups, lr_factor
from tests.tiny_config import compose_tiny

DECAY_MODULES = (nn.Linear, nn.MultiheadAttention)


def tiny_agent(agent: str, extra=()):
    cfg = compose_tiny(agent, "unused", ["agent.obs_dim=14", "agent.action_dim=14", "data.image_shape=[32,32]", *extra])
    return instantiate(cfg.agent)


def owner_modules(model: nn.Module) -> dict[int, tuple[str, nn.Module]]:
    """id(parameter) -> (full name, module that directly owns it)."""
    owners = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            owners[id(param)] = (f"{module_name}.{param_name}".lstrip("."), module)
    return owners


class OptimizerGroupsTest(unittest.TestCase):
    def check_groups(self, agent: nn.Module):
        groups = build_param_groups(agent, weight_decay=1e-5)
        ids = [id(p) for g in groups for p in g["params"]]
        self.assertEqual(len(ids), len(set(ids)), "a parameter is in two groups")
        self.assertEqual(set(ids), {id(p) for p in agent.parameters() if p.requires_grad})

        head_ids = {id(p) for p in agent.noise_pred_net.parameters()}
        owners = owner_modules(agent)
        for group in groups:
            for p in group["params"]:
                name, module = owners[id(p)]
                if id(p) not in head_ids:
                    self.assertEqual(group["weight_decay"], 1e-5, name)
                elif group["weight_decay"] > 0:
                    self.assertTrue(name.endswith("weight") and isinstance(module, DECAY_MODULES), name)
                else:
                    no_decay = (
                        name.endswith("bias")
                        or isinstance(module, (nn.LayerNorm, nn.Embedding, RMSNorm, AttnResOperator))
                        or name.split(".")[-1] in ("pos_emb", "cond_pos_emb", "_dummy_variable")
                    )
                    self.assertTrue(no_decay, name)
        backbone_ids = {id(p) for p in agent.vision_backbone.parameters()}
        self.assertTrue(backbone_ids <= set(ids), "vision backbone parameters missing from the optimizer")
        return groups, owners

    def test_baseline_head_groups(self):
        groups, owners = self.check_groups(tiny_agent("resnet_transformer"))
        zero_decay_names = {owners[id(p)][0] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
        self.assertIn("noise_pred_net.pos_emb", zero_decay_names)
        self.assertIn("noise_pred_net.cond_pos_emb", zero_decay_names)

    def test_imf_head_groups_put_pseudo_queries_and_norms_without_decay(self):
        groups, owners = self.check_groups(tiny_agent("resnet_imf_attnres"))
        zero_decay_names = {owners[id(p)][0] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
        self.assertIn("noise_pred_net.attnres_backbone.layers.0.attn_res.pseudo_query", zero_decay_names)
        self.assertIn("noise_pred_net.attnres_backbone.layers.1.norm.weight", zero_decay_names)
        self.assertIn("noise_pred_net.ln_f.weight", zero_decay_names)

    def test_frozen_backbone_parameters_are_left_out(self):
        agent = tiny_agent("resnet_transformer", ["agent.vision_backbone.freeze_backbone=true"])
        listed = {id(p) for g in build_param_groups(agent, 1e-5) for p in g["params"]}
        frozen = [p for p in agent.vision_backbone.parameters() if not p.requires_grad]
        self.assertGreater(len(frozen), 0)
        self.assertFalse(any(id(p) in listed for p in frozen))


class LearningRateScheduleTest(unittest.TestCase):
    kw = dict(warmup_steps=100, max_steps=1100, lr=1e-4, min_lr=1e-6)

    def test_cosine_warmup_peak_and_floor(self):
        f = lambda s: lr_factor(s, scheduler_type="cosine", **self.kw)
        self.assertEqual(f(0), 0.0)
        self.assertAlmostEqual(f(50), 0.5)
        self.assertAlmostEqual(f(100), 1.0)
        self.assertAlmostEqual(f(600), 0.01 + 0.99 * 0.5)
        self.assertAlmostEqual(f(1100), 0.01)
        after_warmup = [f(s) for s in range(100, 1101, 50)]
        self.assertEqual(after_warmup, sorted(after_warmup, reverse=True))
        self.assertAlmostEqual(f(350), 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.25)))

    def test_constant_after_warmup(self):
        f = lambda s: lr_factor(s, scheduler_type="constant", **self.kw)
        self.assertAlmostEqual(f(25), 0.25)
        self.assertEqual({f(s) for s in (100, 500, 1100)}, {1.0})

    def test_optimizer_lr_follows_the_schedule(self):
        param = nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([param], lr=1e-4)
        cfg = OmegaConf.create({"scheduler_type": "cosine", **self.kw})
        scheduler = build_lr_scheduler(optimizer, cfg)
        lrs = []
        for _ in range(1100):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        self.assertEqual(lrs[0], 0.0)
        self.assertAlmostEqual(lrs[100], 1e-4)
        self.assertAlmostEqual(optimizer.param_groups[0]["lr"], 1e-6)

    def test_unknown_scheduler_type_is_rejected(self):
        optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-4)
        with self.assertRaisesRegex(ValueError, "Use 'cosine' or 'constant'"):
            build_lr_scheduler(optimizer, OmegaConf.create({"scheduler_type": "linear", **self.kw}))


if __name__ == "__main__":
    unittest.main()
