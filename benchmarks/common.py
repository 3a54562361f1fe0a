"""Shared pieces of the model benchmarks: both policies built from the Hydra configs with one head size, and
synthetic batches shaped like the built-in tasks' data (3 cameras of uint8 frames, 14-dim ALOHA state)."""

import argparse
import os
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from roboimi.vla.training.checkpoint import build_agent_from_checkpoint, load_checkpoint
from roboimi.vla.data import build_datasets
from roboimi.vla.training.runtime import resolve_device

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "roboimi", "vla", "conf")
AGENT_CONFIGS = {"ddpm": "resnet_transformer", "imf": "resnet_imf_attnres"}
CAMERA_NAMES = ("r_vis", "top", "front")
STATE_DIM = 14  # bimanual ALOHA: 2 arms x (6 joints + gripper); actions are joint targets of the same size


def add_model_arguments(parser: argparse.ArgumentParser, *, n_emb: int, n_layer: int, n_head: int) -> None:
    """Head size, input size, device and threads: the knobs both policies share in a side-by-side run."""
    parser.add_argument("--n-emb", type=int, default=n_emb, help="head width of both policies")
    parser.add_argument("--n-layer", type=int, default=n_layer, help="head depth of both policies")
    parser.add_argument("--n-head", type=int, default=n_head, help="attention heads (IMF: also n_kv_head)")
    parser.add_argument("--image-size", type=int, default=96, help="square camera image side (px)")
    parser.add_argument("--obs-horizon", type=int, default=2)
    parser.add_argument("--pred-horizon", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (CPU); 1 is steadiest on a shared machine"
    )
    parser.add_argument("--seed", type=int, default=0)


def setup_runtime(args) -> torch.device:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def build_agent(kind: str, args, device: torch.device) -> torch.nn.Module:
    """The 'ddpm' (Transformer1D, DDPM/DDIM) or 'imf' (IMFTransformer1D, iMF) agent from the real configs,
    with the head size of `args` and unit min-max stats (the benchmark data lies in [-1, 1])."""
    if kind not in AGENT_CONFIGS:
        raise ValueError(f"Unknown agent kind {kind!r}; use one of {sorted(AGENT_CONFIGS)}.")
    head = [f"agent.head.n_emb={args.n_emb}", f"agent.head.n_layer={args.n_layer}", f"agent.head.n_head={args.n_head}"]
    if kind == "imf":
        head.append(f"agent.head.n_kv_head={args.n_head}")
    overrides = [
        f"agent={AGENT_CONFIGS[kind]}",
        *head,
        f"agent.obs_dim={STATE_DIM}",
        f"agent.action_dim={STATE_DIM}",
        f"agent.obs_horizon={args.obs_horizon}",
        f"agent.pred_horizon={args.pred_horizon}",
        f"data.camera_names=[{','.join(CAMERA_NAMES)}]",
        f"data.image_shape=[{args.image_size},{args.image_size}]",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=overrides)
    agent = instantiate(cfg.agent)
    low, high = -torch.ones(STATE_DIM), torch.ones(STATE_DIM)
    agent.set_normalization_stats({"qpos_min": low, "qpos_max": high, "action_min": low, "action_max": high})
    return agent.to(device)


def synthetic_batch(batch_size: int, args, device: torch.device) -> dict:
    """A dataset-layout batch: images {cam: uint8 (B, To, 3, H, W)}, qpos (B, To, 14), action (B, Tp, 14),
    action_is_pad (B, Tp) all False. Content does not matter for timing; shapes and dtypes do."""
    size, steps = args.image_size, args.obs_horizon
    images = {
        cam: torch.randint(0, 256, (batch_size, steps, 3, size, size), dtype=torch.uint8, device=device)
        for cam in CAMERA_NAMES
    }
    return {
        "images": images,
        "qpos": torch.rand(batch_size, steps, STATE_DIM, device=device) * 2 - 1,
        "action": torch.rand(batch_size, args.pred_horizon, STATE_DIM, device=device) * 2 - 1,
        "action_is_pad": torch.zeros(batch_size, args.pred_horizon, dtype=torch.bool, device=device),
    }


def parameter_millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a host clock read after it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn, device: torch.device) -> float:
    """Wall time of fn() in ms, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def describe_machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda), torch {torch.__version__}"
    return f"CPU, {threads} torch threads of {os.cpu_count()} cores, torch {torch.__version__}"


def trained_agent_batches(checkpoint_path: str, dataset_dir: str | None, batch_size: int, num_batches: int):
    """A trained agent in eval mode (EMA weights where kept), its stored config, which weights it holds, and
    `num_batches` shuffled training batches (seed 0) of `dataset_dir` (default: the checkpoint's data.dataset_dir)."""
    agent, cfg, weights = build_agent_from_checkpoint(load_checkpoint(checkpoint_path), torch.device("cpu"))
    agent.eval()
    data = build_datasets(
        dataset_dir or cfg.data.dataset_dir, list(cfg.data.camera_names), cfg.data.obs_horizon, cfg.data.pred_horizon,
        image_resize_shape=cfg.data.image_resize_shape, state_keys=cfg.data.state_keys,
    )
    loader = torch.utils.data.DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    return agent, cfg, weights, [batch for batch, _ in zip(loader, range(num_batches))]
