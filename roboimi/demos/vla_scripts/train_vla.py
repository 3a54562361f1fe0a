"""Train a VLA agent (DDPM/DDIM transformer baseline or IMF-AttnRes) on a directory of HDF5 episodes.

    python roboimi/demos/vla_scripts/train_vla.py agent=resnet_imf_attnres data.dataset_dir=data/sim_transfer

The workspace is roboimi.vla.training.trainer.Trainer; outputs go to the Hydra run dir (checkpoints/, logs.json.txt,
swanlog/, rollouts/).
"""
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from roboimi.vla import CONFIG_DIR
from roboimi.vla.training.trainer import Trainer


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    Trainer(cfg, Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task)).fit()


if __name__ == "__main__":
    main()
