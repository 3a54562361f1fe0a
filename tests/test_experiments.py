"""The `experiment` group: every recipe composes and builds its agent, says what it trains on, and gives the recorder
the matching demonstrations; each baseline differs from its IMF recipe in the agent alone."""
import unittest

from hydra.utils import instantiate
from omegaconf import OmegaConf

from roboimi.demos.record_sim_episodes import compose_config as compose_recording
from roboimi.vla.experiments import compose_experiment, experiment_names, recording_settings

STATE_DIMS = {"qpos": 14, "env_state": None}  # env_state's size depends on the task
ENV_STATE_DIMS = {"sim_transfer": 7, "sim_insertion": 14}


class ExperimentsTest(unittest.TestCase):
    def test_every_experiment_composes_names_itself_and_builds_its_agent(self):
        names = experiment_names()
        self.assertGreaterEqual(len(names), 12)
        for name in names:
            with self.subTest(experiment=name):
                cfg = compose_experiment(name)
                self.assertEqual(cfg.recipe.name, name)
                self.assertIn(cfg.data.task, ENV_STATE_DIMS)
                self.assertIsInstance(cfg.recipe.demos, int)
                self.assertTrue(cfg.data.dataset_dir.startswith("data/"))
                if cfg.data.camera_names:
                    self.assertEqual(len(cfg.recipe.image_size), 2)
                    crop = cfg.agent.vision_backbone.crop_shape
                    cfg.data.image_shape = list(crop) if crop else list(cfg.recipe.image_size)
                else:
                    self.assertIsNone(cfg.recipe.image_size)
                dims = {**STATE_DIMS, "env_state": ENV_STATE_DIMS[cfg.data.task]}
                cfg.agent.obs_dim = sum(dims[key] for key in cfg.data.state_keys)
                cfg.agent.action_dim = 14
                agent = instantiate(cfg.agent)
                self.assertEqual(agent.observation_spec.camera_names, tuple(cfg.data.camera_names))
                self.assertEqual(type(agent).__name__, "IMFVLAAgent" if "_imf" in name else "VLAAgent")

    def test_each_baseline_differs_from_its_imf_recipe_in_the_agent_alone(self):
        """The comparison is fair: data, views, predicted chunk, steps and schedule are the same for both agents. (The
        steps played per chunk are an acting setting, kept at what each agent was measured with; eval_vla.py sets it.)"""
        baselines = [name for name in experiment_names() if name.endswith("_ddim")]
        self.assertGreaterEqual(len(baselines), 5)
        for baseline in baselines:
            with self.subTest(experiment=baseline):
                imf = OmegaConf.to_container(compose_experiment(baseline.replace("_ddim", "_imf")))
                ddim = OmegaConf.to_container(compose_experiment(baseline))
                for cfg in (imf, ddim):
                    del cfg["recipe"]["name"]
                self.assertEqual({k: v for k, v in imf.items() if k != "agent"}, {k: v for k, v in ddim.items() if k != "agent"})
                for key in ("pred_horizon", "obs_horizon", "vision_backbone"):
                    self.assertEqual(imf["agent"][key], ddim["agent"][key], key)

    def test_the_reference_formal_command_is_the_specified_one(self):
        cfg = compose_experiment("reference_formal_imf")
        head = cfg.agent.head
        self.assertEqual((head.n_emb, head.n_layer, head.n_head, head.n_kv_head), (384, 18, 1, 1))
        self.assertEqual((cfg.agent.prediction, cfg.agent.loss_space), ("u", "velocity"))
        self.assertEqual((cfg.train.batch_size, cfg.train.lr, cfg.train.max_steps), (80, 5e-4, 150000))
        self.assertEqual(list(cfg.data.camera_names), ["r_vis", "top", "front"])
        self.assertEqual(cfg.agent.vision_backbone.vision_backbone, "resnet18")

    def test_the_recorder_takes_an_experiment_and_settings_beside_it_win(self):
        cfg = compose_recording(["experiment=top_insertion_ddim", "num_episodes=3", "num_workers=2"])
        self.assertEqual(
            (cfg.task, cfg.num_episodes, cfg.dataset_dir, list(cfg.camera_names), list(cfg.image_size), cfg.num_workers),
            ("sim_insertion", 3, "data/sim_insertion_top_128px_200", ["top"], [128, 128], 2),
        )
        self.assertEqual(recording_settings("state_insertion_imf")["camera_names"], [])
        with self.assertRaisesRegex(SystemExit, "Unknown experiment 'nope'; the experiments are: .*state_transfer_imf"):
            compose_recording(["experiment=nope"])

    def test_an_unknown_experiment_names_the_known_ones(self):
        with self.assertRaisesRegex(ValueError, "Unknown experiment 'top_transfer'; the experiments are: .*top_transfer_imf"):
            compose_experiment("top_transfer")


if __name__ == "__main__":
    unittest.main()
