"""RoboIMI visuomotor imitation policies: data, models, agents and training."""
from pathlib import Path

# The Hydra config tree of training and evaluation (config.yaml plus the agent/backbone/head/data/train/eval groups).
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
