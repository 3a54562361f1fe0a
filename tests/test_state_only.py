"""State-only configuration: state_keys in the dataset, zero-camera agents, the rollout state adapter, and (slow)
the overfit check and the state recipes' success on held-out seeds."""
import os
import tempfile
import unittest

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from roboimi.demos.record_sim_episodes import record_episodes
from roboimi.vla.data import build_datasets
from roboimi.evaluation.agent_policy import AgentPolicy
from roboimi.vla.models.backbones.no_vision import NoVisionBackbone
from tests.synthetic_episodes import write_dataset
from tests.recipe_runs import rollout_success, train_recipe
from tests.tiny_config import CONFIG_DIR

torch.set_num_threads(1)

STATE_DIM, ACTION_DIM = 5, 2
STATS = {
    "qpos_min": np.zeros(STATE_DIM, dtype=np.float32),
    "qpos_max": np.full(STATE_DIM, 2.0, dtype=np.float32),  # normalized state = qpos - 1
    "action_min": np.array([-1.0, 10.0], dtype=np.float32),
    "action_max": np.array([1.0, 20.0], dtype=np.float32),
}
TINY_HEADS = {
    "state_transformer": ["agent.head.n_layer=1", "agent.head.n_emb=16", "agent.head.n_head=2"],
    "state_imf_attnres": ["agent.head.n_layer=1", "agent.head.n_emb=16", "agent.head.n_head=2", "agent.head.n_kv_head=2"],
}


def make_state_agent(agent: str, *extra: str):
    """A tiny zero-camera agent from the real configs (data=sim_transfer_state), state 5 dims, action 2 dims."""
    overrides = [
        f"agent={agent}",
        "data=sim_transfer_state",
        *extra,
        *TINY_HEADS[agent],
        f"agent.obs_dim={STATE_DIM}",
        f"agent.action_dim={ACTION_DIM}",
        "agent.pred_horizon=8",
        "agent.num_action_steps=4",
        "agent.inference_steps=2",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.agent)
    model.set_normalization_stats(STATS)
    return model


class StateKeysDatasetTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        write_dataset(self.dir, lengths=(10, 12), state_dim=3, action_dim=2, camera_names=("top",), image_size=(8, 8))

    def tearDown(self):
        self.tmp.cleanup()

    def test_state_is_the_keys_concatenated_in_order_without_images(self):
        bundle = build_datasets(self.dir, [], obs_horizon=2, pred_horizon=4, state_keys=("qvel", "qpos"))
        self.assertEqual(bundle.state_dim, 6)
        self.assertIsNone(bundle.image_shape)
        sample = bundle.train[10 + 5]  # episode 1 (seed 1, after the 10 frames of episode 0), anchor t = 5
        self.assertEqual(sample["images"], {})
        for row, t in enumerate((4, 5)):
            expected = [-t] * 3 + [1000 + t + j / 100 for j in range(3)]  # qvel = -t, then qpos
            np.testing.assert_allclose(sample["qpos"][row].numpy(), expected, rtol=0, atol=1e-3)
        # Stats follow the concatenated layout: qvel spans -(T-1)..0 over both episodes, qpos 0..1011.02.
        np.testing.assert_allclose(bundle.stats["qpos_min"], [-11, -11, -11, 0, 0.01, 0.02], atol=1e-4)
        np.testing.assert_allclose(bundle.stats["qpos_max"], [0, 0, 0, 1011, 1011.01, 1011.02], atol=1e-3)

    def test_default_state_is_qpos_alone(self):
        bundle = build_datasets(self.dir, ["top"], obs_horizon=2, pred_horizon=4)
        self.assertEqual(bundle.state_dim, 3)
        self.assertEqual(bundle.image_shape, (8, 8))
        np.testing.assert_allclose(bundle.train[3]["qpos"][-1].numpy(), [3.0, 3.01, 3.02], atol=1e-4)

    def test_missing_state_key_names_the_file_and_the_available_keys(self):
        with self.assertRaises(ValueError) as ctx:
            build_datasets(self.dir, [], obs_horizon=2, pred_horizon=4, state_keys=("qpos", "env_state"))
        message = str(ctx.exception)
        self.assertIn("['env_state']", message)
        self.assertIn(os.path.join(self.dir, "episode_0.hdf5"), message)
        self.assertIn("['qpos', 'qvel']", message)
        self.assertIn("data.state_keys", message)


class ZeroCameraAgentTest(unittest.TestCase):
    def test_no_vision_backbone_rejects_cameras(self):
        with self.assertRaisesRegex(ValueError, r"camera_names=\['top'\].*data.camera_names=\[\]"):
            NoVisionBackbone(camera_names=("top",))

    def test_condition_is_the_normalized_state(self):
        for name in TINY_HEADS:
            with self.subTest(agent=name):
                model = make_state_agent(name)
                self.assertEqual(model.cond_dim, STATE_DIM)
                self.assertEqual(model.noise_pred_net.cond_obs_emb.in_features, STATE_DIM)
                qpos = torch.rand(3, 2, STATE_DIM) * 2
                torch.testing.assert_close(model.encode_observation({}, qpos), qpos - 1, atol=1e-6, rtol=0)

    def test_loss_trains_the_head_from_a_state_only_batch(self):
        for name in TINY_HEADS:
            with self.subTest(agent=name):
                model = make_state_agent(name)
                batch = {
                    "images": {},
                    "qpos": torch.rand(4, 2, STATE_DIM) * 2,
                    "action": torch.rand(4, 8, ACTION_DIM),
                    "action_is_pad": torch.zeros(4, 8, dtype=torch.bool),
                }
                loss = model.compute_loss(batch)
                self.assertTrue(torch.isfinite(loss))
                loss.backward()
                self.assertGreater(model.noise_pred_net.cond_obs_emb.weight.grad.abs().sum().item(), 0.0)

    def test_select_action_replans_from_the_state_alone(self):
        for name in TINY_HEADS:
            with self.subTest(agent=name):
                model = make_state_agent(name, "data.state_keys=[qpos]").eval()
                torch.manual_seed(1)
                action = model.select_action({"qpos": np.ones(STATE_DIM), "images": {}})
                # The same draw from a history of the first frame repeated: the chunk's current step (index 1).
                torch.manual_seed(1)
                chunk = model.predict_action({"images": {}, "qpos": torch.ones(1, 2, STATE_DIM)})
                torch.testing.assert_close(action, chunk[0, 1])
                self.assertEqual(len(model._queues["action"]), 3)  # one chunk of 4, one action taken


class AgentStateAssemblyTest(unittest.TestCase):
    def test_agent_concatenates_its_state_keys_in_order(self):
        model = make_state_agent("state_transformer", "data.state_keys=[env_state,qpos]").eval()
        self.assertEqual(model.observation_spec.state_keys, ("env_state", "qpos"))
        policy = AgentPolicy(model)
        obs = {"qpos": np.array([0.1, 0.2]), "qvel": np.zeros(2), "env_state": np.array([1.0, 1.5, 2.0]), "images": {}}
        action = policy.select_action(obs)
        self.assertEqual(tuple(action.shape), (ACTION_DIM,))
        np.testing.assert_allclose(model._queues["qpos"][-1].numpy(), [1.0, 1.5, 2.0, 0.1, 0.2], atol=1e-7)
        self.assertEqual(policy.last_preprocess_ms, model.last_preprocess_ms)
        policy.reset()
        self.assertEqual(len(model._queues["qpos"]), 0)

    def test_missing_state_key_is_named(self):
        policy = AgentPolicy(make_state_agent("state_transformer"))  # data=sim_transfer_state: [qpos, env_state]
        with self.assertRaisesRegex(KeyError, r"\['env_state'\]"):
            policy.select_action({"qpos": np.zeros(5), "images": {}})


def train_state_recipe(agent: str, task: str, dataset_dir, run_dir, extra=()):
    """Train `agent` with the committed state recipe (train=state) and return the Trainer."""
    return train_recipe([f"agent={agent}", f"data={task}_state", "train=state", f"data.dataset_dir={dataset_dir}", *extra], run_dir)


@pytest.mark.slow
class OverfitCheckTest(unittest.TestCase):
    """Both agents, trained with the state recipe on 5 transfer demos, replay those demos' own seeds (about 12 min).

    A policy that cannot reproduce its training episodes cannot fit its data: the check that caught the
    epsilon / u parameterizations failing at small data. IMF gets more steps: at 1500 it replayed 2 of 5.
    """

    STEPS = {"state_transformer": 1500, "state_imf_attnres": 3000}

    def test_both_agents_replay_their_training_episodes(self):
        with tempfile.TemporaryDirectory() as tmp:
            summary = record_episodes("sim_transfer", 5, f"{tmp}/demos", camera_names=(), progress=False)
            self.assertEqual(summary["next_seed"], 5, "the expert failed a seed; the demos are not seeds 0-4")
            for agent, steps in self.STEPS.items():
                with self.subTest(agent=agent):
                    trainer = train_state_recipe(agent, "sim_transfer", f"{tmp}/demos", f"{tmp}/{agent}", [f"train.max_steps={steps}"])
                    self.assertGreaterEqual(rollout_success(trainer, num_episodes=5, seed=0), 0.8)


@pytest.mark.slow
class StateRecipeTest(unittest.TestCase):
    """The committed state recipes on 50 transfer demos succeed on held-out seeds (about 30 min on 2 cores; the bf16
    run about 7 more).

    Records camera-less demos into data/sim_transfer_state_50 when missing (under a minute).
    """

    DATASET_DIR = "data/sim_transfer_state_50"
    # Measured on 50 held-out seeds: IMF-1 100 %, DDIM-10 100 % (docs/results.md); the floors leave room for seed noise.
    MIN_SUCCESS = {"state_imf_attnres": 0.9, "state_transformer": 0.9}

    def test_both_agents_transfer_the_cube(self):
        record_episodes("sim_transfer", 50, self.DATASET_DIR, camera_names=(), progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            for agent, floor in self.MIN_SUCCESS.items():
                with self.subTest(agent=agent):
                    trainer = train_state_recipe(agent, "sim_transfer", self.DATASET_DIR, f"{tmp}/{agent}")
                    self.assertGreaterEqual(rollout_success(trainer, num_episodes=20, seed=1000), floor)

    def test_the_imf_recipe_learns_in_bf16(self):
        """train.precision=bf16 (autocast; v pass, JVP and loss in fp32) reaches the fp32 recipe's success."""
        record_episodes("sim_transfer", 50, self.DATASET_DIR, camera_names=(), progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = train_state_recipe("state_imf_attnres", "sim_transfer", self.DATASET_DIR, f"{tmp}/bf16", ["train.precision=bf16"])
            self.assertGreaterEqual(rollout_success(trainer, num_episodes=20, seed=1000), self.MIN_SUCCESS["state_imf_attnres"])
