"""Can the HDF5 data pipeline keep up with training?

Measures DataLoader samples/s with 0 and 2 workers over a dataset of ACT-layout episodes and, when the agent
is available, the samples/s one train step (compute_loss + backward + AdamW) consumes. A ratio above 1 means
the loader is not the bottleneck.

Without --dataset-dir it writes a temporary synthetic dataset: 3 cameras of 96x96 image-like frames (a smoothly
lit scene with moving boxes, compressing like MuJoCo renders) stored with gzip level 1 in one-frame chunks, so
decompression costs what it costs on recorded data.

    python benchmarks/data_throughput.py
    python benchmarks/data_throughput.py --dataset-dir data/sim_transfer --batches 100
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from roboimi.vla.data import build_datasets
from roboimi.vla.data.episode_files import write_episode_file
from roboimi.vla.training.runtime import resolve_device, seed_everything

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "roboimi", "vla", "conf")


def image_like_frames(rng, num_frames, size):
    """uint8 (num_frames, size, size, 3) resembling a flat-shaded render: a lit wall, a table top with smooth
    lighting falloff, three shaded boxes moving across it. gzip level 1 compresses these frames 8-10x, as it
    does 96x96 MuJoCo renders of the ALOHA scenes (7-13x)."""
    y, x = np.mgrid[0:size, 0:size] / size
    background = np.array([70.0, 80.0, 95.0]) * (0.7 + 0.3 * y)[..., None]
    table = y > 0.35
    falloff = 1.0 - 0.4 * np.hypot(x - 0.5, y - 0.7)
    background[table] = np.array([150.0, 120.0, 90.0]) * falloff[table, None]
    frames = np.repeat(background[None], num_frames, axis=0)
    for _ in range(3):
        colour = rng.uniform(0, 255, size=3)
        start, end = rng.uniform(0.1, 0.8, size=2), rng.uniform(0.1, 0.8, size=2)
        half = rng.uniform(0.05, 0.12)
        for t in range(num_frames):
            cy, cx = start + (end - start) * t / max(num_frames - 1, 1)
            inside = (np.abs(y - cy) < half) & (np.abs(x - cx) < half)
            frames[t][inside] = colour * (1.0 - 0.3 * (x[inside] - cx + half) / (2 * half))[:, None]
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_synthetic_dataset(dirpath, num_episodes, num_frames, image_size, camera_names, seed):
    rng = np.random.default_rng(seed)
    for i in range(num_episodes):
        qpos = np.cumsum(rng.normal(0, 0.01, size=(num_frames, 14)), axis=0).astype(np.float32)
        action = np.roll(qpos, -1, axis=0)
        images = {cam: image_like_frames(rng, num_frames, image_size) for cam in camera_names}
        path = os.path.join(dirpath, f"episode_{i}.hdf5")
        write_episode_file(path, qpos, action, images, extra_observations={"qvel": np.zeros_like(qpos)})


def dataset_size_mb(bundle):
    return sum(os.path.getsize(path) for path in bundle.train_episodes) / 1e6


def raw_image_mb(bundle):
    height, width = bundle.image_shape
    return len(bundle.train) * len(bundle.train.camera_names) * height * width * 3 / 1e6


def loader_samples_per_s(dataset, batch_size, num_workers, num_batches, seed):
    """Timed after the first batch, so worker start-up is excluded; at most one epoch."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    num_batches = min(num_batches, len(loader) - 1)
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * batch_size / (time.perf_counter() - start)


def build_agent(bundle, obs_horizon, pred_horizon):
    overrides = [
        f"agent.obs_dim={bundle.state_dim}",
        f"agent.action_dim={bundle.action_dim}",
        f"agent.obs_horizon={obs_horizon}",
        f"agent.pred_horizon={pred_horizon}",
        f"data.camera_names=[{','.join(bundle.train.camera_names)}]",
        f"data.image_shape=[{bundle.image_shape[0]},{bundle.image_shape[1]}]",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=overrides)
    agent = instantiate(cfg.agent)
    agent.set_normalization_stats(bundle.stats)
    return agent


def trainer_samples_per_s(bundle, args, device):
    """Train-step rate on batches fetched beforehand, so only compute is timed."""
    agent = build_agent(bundle, args.obs_horizon, args.pred_horizon).to(device).train()
    optimizer = torch.optim.AdamW([p for p in agent.parameters() if p.requires_grad], lr=1e-4)
    loader = DataLoader(bundle.train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    batches = iter(loader)
    steps = [to_device(next(batches), device) for _ in range(args.train_steps + 1)]

    def train_step(batch):
        loss = agent.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_step(steps[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in steps[1:]:
        train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.train_steps * args.batch_size / (time.perf_counter() - start)


def to_device(batch, device):
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch.to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", help="existing directory of episode_<i>.hdf5; default: a synthetic one")
    parser.add_argument("--camera-names", nargs="+", default=["r_vis", "top", "front"])
    parser.add_argument("--episodes", type=int, default=4, help="synthetic episodes")
    parser.add_argument("--frames", type=int, default=100, help="frames per synthetic episode")
    parser.add_argument("--image-size", type=int, default=96, help="synthetic image side")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--obs-horizon", type=int, default=2)
    parser.add_argument("--pred-horizon", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40, help="timed loader batches per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--train-steps", type=int, default=3, help="timed train steps")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU); 1 is steadiest on a shared machine")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    device = resolve_device("auto")

    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = args.dataset_dir
        if dataset_dir is None:
            dataset_dir = tmp
            start = time.perf_counter()
            write_synthetic_dataset(tmp, args.episodes, args.frames, args.image_size, args.camera_names, args.seed)
            elapsed = time.perf_counter() - start
            print(f"wrote {args.episodes} synthetic episodes x {args.frames} frames in {elapsed:.1f} s")
        bundle = build_datasets(dataset_dir, args.camera_names, args.obs_horizon, args.pred_horizon, seed=args.seed)
        print(
            f"dataset: {len(bundle.train_episodes)} episodes, {len(bundle.train)} samples, "
            f"images {bundle.image_shape}, {dataset_size_mb(bundle):.1f} MB on disk "
            f"for {raw_image_mb(bundle):.1f} MB of raw images"
        )
        rows = []
        for num_workers in args.workers:
            rate = loader_samples_per_s(bundle.train, args.batch_size, num_workers, args.batches, args.seed)
            rows.append((f"DataLoader, {num_workers} workers", rate))
        trainer_rate = trainer_samples_per_s(bundle, args, device)
        bundle.train.close()

    print(f"\n{'stage':<40} {'samples/s':>10}")
    for name, rate in rows:
        print(f"{name:<40} {rate:>10.1f}")
    print(f"{f'train step ({device.type}, {args.threads} threads)':<40} {trainer_rate:>10.1f}")
    loader_rate = max(rate for _, rate in rows)  # the best worker setting
    print(f"loader/trainer throughput ratio: {loader_rate / trainer_rate:.1f}")


if __name__ == "__main__":
    main()
