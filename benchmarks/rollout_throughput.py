"""How many control steps per second does a rollout of the built-in simulation run?

Each row rolls out one episode prefix through the real evaluator (`roboimi.envs.evaluate_policy`) with the
3 RoboIMI cameras (r_vis, top, front) rendered every step, at 96x96 and 240x320, shadows off and on, and
breaks one loop iteration down into observation read (state + rendering), policy and physics time.
Policies: "hold" (commands the current joint positions: the loop without inference) and "agent" (a tiny
VLAAgent from the Hydra configs, DDIM, re-planning every num_action_steps). Last, the same seeded episodes are
rolled out sequentially and in --workers processes (eval.num_workers) to measure the parallel speed-up.

    python benchmarks/rollout_throughput.py
    python benchmarks/rollout_throughput.py --steps 100 --task sim_insertion
"""

import argparse
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roboimi.evaluation.rollout import evaluate_policy  # noqa: E402  (importing roboimi.envs sets MUJOCO_GL first)
from benchmarks.common import build_agent  # noqa: E402

CAMERAS = ("r_vis", "top", "front")
IMAGE_SIZES = ((96, 96), (240, 320))
AGENT_IMAGE_SIZE = 96  # the agent resizes larger camera images to its training size, as in a real rollout


class HoldPolicy:
    def reset(self):
        pass

    def select_action(self, obs):
        return obs["qpos"]


def build_agent_policy() -> torch.nn.Module:
    """A tiny VLAAgent: n_emb 64, 2 layers, 10 DDIM steps, 96x96 images."""
    args = argparse.Namespace(n_emb=64, n_layer=2, n_head=2, image_size=AGENT_IMAGE_SIZE, obs_horizon=2, pred_horizon=16)
    return build_agent("ddpm", args, torch.device("cpu"))


def parallel_speedup(agent, args) -> list[tuple[int, float]]:
    """(workers, wall seconds) for the same seeded episodes, sequential first; worker start-up is included."""
    timings = []
    for workers in (1, args.workers):
        start = time.perf_counter()
        evaluate_policy(
            agent, args.task, args.parallel_episodes, image_size=(AGENT_IMAGE_SIZE, AGENT_IMAGE_SIZE),
            camera_names=CAMERAS, max_timesteps=args.parallel_steps, trajectory_image=False, progress=False,
            num_workers=workers,
        )
        timings.append((workers, time.perf_counter() - start))
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sim_transfer")
    parser.add_argument("--steps", type=int, default=48, help="control steps per row")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU); 1 is steadiest on a shared machine")
    parser.add_argument("--workers", type=int, default=2, help="rollout processes for the parallel comparison")
    parser.add_argument("--parallel-episodes", type=int, default=4, help="episodes for the parallel comparison")
    parser.add_argument("--parallel-steps", type=int, default=200, help="control steps per episode there")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    agent, agent_name = build_agent_policy(), "VLAAgent (tiny, DDIM 10)"
    # Warm-up: the first forward passes allocate and pick kernels; keep them out of the table.
    evaluate_policy(agent, args.task, 1, camera_names=CAMERAS, max_timesteps=2, trajectory_image=False, progress=False)

    rows = []
    for height, width in IMAGE_SIZES:
        for shadows in (False, True):
            for policy_name, policy in (("hold", HoldPolicy()), ("agent", agent)):
                summary = evaluate_policy(
                    policy, args.task, 1, image_size=(height, width), camera_names=CAMERAS, shadows=shadows,
                    max_timesteps=args.steps, trajectory_image=False, progress=False,
                )
                rows.append((f"{height}x{width}", "on" if shadows else "off", policy_name, summary))

    print(f"\n{args.task}, 3 cameras {CAMERAS}, {args.steps} steps per row; agent = {agent_name}")
    header = ("image", "shadows", "policy", "steps/s", "obs_read", "inference", "physics", "loop")
    print(" ".join(f"{name:>9}" for name in header) + "  (times in ms/step)")
    for size, shadows, policy_name, s in rows:
        print(
            f"{size:>9} {shadows:>9} {policy_name:>9} {1e3 / s['loop_total_ms']:9.1f} {s['obs_read_ms']:9.1f} "
            f"{s['preprocess_ms'] + s['inference_ms']:9.1f} {s['env_step_ms']:9.2f} {s['loop_total_ms']:9.1f}"
        )
    steps_per_s = {(size, shadows, policy_name): 1e3 / s["loop_total_ms"] for size, shadows, policy_name, s in rows}
    sizes = [f"{height}x{width}" for height, width in IMAGE_SIZES]
    env_only = ", ".join(
        f"{size} {steps_per_s[size, 'off', 'hold']:.1f}/{steps_per_s[size, 'on', 'hold']:.1f}" for size in sizes
    )
    with_agent = ", ".join(f"{size} {steps_per_s[size, 'off', 'agent']:.1f}" for size in sizes)
    timings = parallel_speedup(agent, args)
    print(f"\n{args.parallel_episodes} episodes x {args.parallel_steps} steps with the agent at 96x96 (wall time incl. start-up)")
    for workers, seconds in timings:
        print(f"{workers:>2} worker(s): {seconds:6.1f} s")
    speedup = timings[0][1] / timings[1][1]
    print(
        f"summary: env steps/s, 3 cameras, shadows off/on: {env_only}; with {agent_name}, shadows off: {with_agent}; "
        f"{args.workers}-worker rollout speed-up: {speedup:.2f}x"
    )


if __name__ == "__main__":
    main()
