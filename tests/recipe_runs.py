"""Train a committed recipe and score its policy in the simulator: the pieces of the slow learning tests."""
from hydra import compose, initialize_config_dir

from roboimi.evaluation.agent_policy import evaluate_agent
from roboimi.vla.training.trainer import Trainer
from tests.tiny_config import CONFIG_DIR


def train_recipe(overrides: list[str], run_dir) -> Trainer:
    """Compose the real config with `overrides` (rollout validation off), train it to the end, return the Trainer."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=[*overrides, "train.rollout_val_freq_epochs=0"])
    trainer = Trainer(cfg, run_dir)
    trainer.fit()
    return trainer


def rollout_success(trainer: Trainer, num_episodes: int, seed: int) -> float:
    """Success rate of the trainer's rollout policy (EMA weights) over seeds seed .. seed + num_episodes - 1."""
    summary = evaluate_agent(
        trainer.policy, trainer.cfg, num_episodes=num_episodes, seed=seed, output_dir=None, record_video=False, progress=False
    )
    return summary["success_rate"]
