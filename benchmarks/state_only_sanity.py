"""State-only sanity check: does each objective learn the cube transfer when it sees the state it needs?

Both agents run without cameras on data=sim_transfer_state (condition = joint state + the cube pose the simulator
records) and train with train_vla's Trainer. Measured on 2 CPU cores (docs/results.md): 8000 steps (3.4 min
DDPM, 11 min IMF) take both policies to the cube (mean max reward 1.05 / 1.30 of 4; holding still
scores 0), rarely to a lift and not to a transfer. --min-max-reward turns the run into a check: a drop below it flags
a regression in the data pipeline, the objective, the sampler or the rollout bridge.

    python benchmarks/state_only_sanity.py --agent both --steps 8000 --min-max-reward 0.8
    python benchmarks/state_only_sanity.py --agent state_imf_attnres --eval-episodes 20

Evaluation rolls out seeds 1000.. (the recording used 0..), i.e. cube poses not seen in training.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from roboimi.vla import CONFIG_DIR
from roboimi.vla.trainer import Trainer
from roboimi.vla.data.episode_files import find_episode_files
from roboimi.vla.evaluation import evaluate_agent

AGENTS = ("state_transformer", "state_imf_attnres")
HEADS = {
    "state_transformer": ["agent.head.n_head=4"],
    "state_imf_attnres": ["agent.head.n_head=4", "agent.head.n_kv_head=4"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", choices=(*AGENTS, "both"), default="both")
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps per agent")
    parser.add_argument("--episodes", type=int, default=50, help="training episodes (the first N of the dataset)")
    parser.add_argument("--eval-episodes", type=int, default=20, help="seeded rollouts per agent")
    parser.add_argument("--dataset-dir", default="data/sim_transfer")
    parser.add_argument("--n-emb", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--min-max-reward", type=float, default=None,
        help="exit with an error when an agent's mean max reward (0..4) is below this",
    )
    return parser.parse_args(argv)


def link_first_episodes(dataset_dir: str, num_episodes: int, into: Path) -> Path:
    """A directory of symlinks to the first `num_episodes` episode files, so training uses exactly those."""
    paths = find_episode_files(dataset_dir)
    if len(paths) < num_episodes:
        raise ValueError(
            f"'{dataset_dir}' has {len(paths)} episodes, fewer than --episodes={num_episodes}. Record more or lower "
            f"--episodes."
        )
    into.mkdir(parents=True)
    for path in paths[:num_episodes]:
        os.symlink(os.path.abspath(path), into / os.path.basename(path))
    return into


def compose_config(agent: str, args, dataset_dir: Path):
    overrides = [
        f"agent={agent}",
        "data=sim_transfer_state",
        f"data.dataset_dir={dataset_dir}",
        f"agent.head.n_emb={args.n_emb}",
        f"agent.head.n_layer={args.n_layer}",
        *HEADS[agent],
        f"train.device={args.device}",
        f"train.seed={args.seed}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}",
        f"train.max_steps={args.steps}",
        f"train.warmup_steps={min(100, args.steps // 10)}",
        "train.val_split=0.0",
        "train.num_workers=0",
        f"train.log_freq={max(1, args.steps // 20)}",
        f"train.save_freq={args.steps}",
        "train.rollout_val_freq_epochs=0",
        "train.use_swanlab=false",
        "eval.trajectory_image=false",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("config", overrides=overrides)


def last_logged_loss(jsonl_path: Path) -> float:
    losses = [record["train/loss"] for record in map(json.loads, jsonl_path.read_text().splitlines()) if "train/loss" in record]
    return losses[-1]


def train_and_evaluate(agent: str, args, workdir: Path) -> dict:
    """Train one agent from scratch, roll it out; returns the table row."""
    dataset_dir = link_first_episodes(args.dataset_dir, args.episodes, workdir / f"{agent}_data")
    cfg = compose_config(agent, args, dataset_dir)
    trainer = Trainer(cfg, workdir / agent)
    start = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - start
    summary = evaluate_agent(trainer.agent, cfg, num_episodes=args.eval_episodes, output_dir=None, record_video=False)
    return {
        "agent": agent,
        "steps": args.steps,
        "train_s": train_s,
        "final_loss": last_logged_loss(trainer.logger.jsonl_path),
        "success_rate": summary["success_rate"],
        "mean_max_reward": summary["mean_max_reward"],
    }


def print_table(rows: list[dict], args) -> None:
    print(f"\nstate-only sanity: {args.episodes} training episodes, {args.eval_episodes} rollouts per agent")
    print(f"{'agent':<20} {'steps':>6} {'train s':>8} {'final loss':>11} {'success':>8} {'mean max reward':>16}")
    for row in rows:
        print(
            f"{row['agent']:<20} {row['steps']:>6} {row['train_s']:>8.0f} {row['final_loss']:>11.4f} "
            f"{row['success_rate']:>8.2f} {row['mean_max_reward']:>16.2f}"
        )
    print("summary: " + ", ".join(f"{row['agent']} success {row['success_rate']:.2f}" for row in rows))


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    agents = AGENTS if args.agent == "both" else (args.agent,)
    with tempfile.TemporaryDirectory(prefix="state_only_sanity_") as workdir:
        rows = [train_and_evaluate(agent, args, Path(workdir)) for agent in agents]
    print_table(rows, args)
    if args.min_max_reward is not None:
        failed = [row["agent"] for row in rows if row["mean_max_reward"] < args.min_max_reward]
        if failed:
            raise SystemExit(f"state-only sanity failed: mean max reward below {args.min_max_reward} for {failed}.")
    return rows


if __name__ == "__main__":
    main()
