from setuptools import find_packages, setup

setup(
    name="roboimi",
    version="0.1.0",
    description="Visuomotor imitation policies (IMF-AttnRes and a DDPM/DDIM transformer baseline) "
    "for dual-arm MuJoCo manipulation",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["roboimi", "roboimi.*"]),
    include_package_data=True,
    package_data={"roboimi.vla": ["conf/**/*.yaml", "conf/*.yaml"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "hydra-core==1.3.8",
        # Training-seed sweeps (train_vla.py -m): parallel local jobs, and the same sweep on a SLURM cluster.
        "hydra-joblib-launcher==1.2.0",
        "joblib==1.6.0",
        "hydra-submitit-launcher==1.2.0",
        "submitit==1.5.4",
        "omegaconf>=2.3,<2.4",
        "diffusers==0.42.1",
        "swanlab[dashboard]==0.10.3",
        "h5py==3.16.0",
        "gym-aloha==0.1.5",
        "mujoco==3.8.1",
        "dm-control==1.0.41",
        "gymnasium==1.4.0",
        "imageio==2.38.2",
        "imageio-ffmpeg==0.8.1",
        "numpy>=2,<3",
        "tqdm",
        "pillow",
    ],
    entry_points={
        "console_scripts": [
            "roboimi-train=roboimi.demos.vla_scripts.train_vla:main",
            "roboimi-eval=roboimi.demos.vla_scripts.eval_vla:cli",
            "roboimi-record=roboimi.demos.record_sim_episodes:cli",
        ],
    },
    extras_require={
        "test": ["pytest"],
        # Plots of training curves and scores (scripts/summarize_results.py).
        "bench": ["matplotlib==3.11.2"],
    },
)
