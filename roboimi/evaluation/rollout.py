"""The rollout evaluator shared by training-time validation and eval_vla.py.

A policy exposes `reset()` and `select_action(obs) -> (action_dim,)` (numpy array or torch tensor), where
obs = {"qpos": (S,), "qvel": (S,), "env_state": (E,), "images": {cam: (H, W, 3) uint8}}. It may report
its own preprocessing time per call in `policy.last_preprocess_ms`; that part is then split out of
`inference_ms`.

An evaluation can be stopped (`should_stop`): the episodes running then are abandoned, their workers ended at once,
and the summary covers the episodes finished before them, marked partial.
"""

import json
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from roboimi.envs.registry import make_env
from roboimi.envs.sim_env import InvalidActionError, SimulationDivergedError, check_action
from roboimi.evaluation import media
from roboimi.evaluation.success_stats import wilson_interval
from roboimi.worker_process import init_worker_process

TIMING_KEYS = ("obs_read_ms", "preprocess_ms", "inference_ms", "env_step_ms", "loop_total_ms")
EPISODE_KEYS = ("seed", "return", "max_reward", "success", "steps", "aborted")
SHEET_FRAMES = 6  # frames per episode on the contact sheet
# What an evaluation writes into its output dir; a new evaluation there first deletes an earlier one's.
EVALUATION_OUTPUTS = ("summary.json", "contact_sheet.png", "trajectory_*.npz", "trajectory_*.png", "episode_*.gif", "episode_*.mp4")
EPISODE_ARTIFACT = re.compile(r"(?:trajectory|episode)_(\d+)\.\w+")
STOP_POLL_S = 0.2  # how often the process waiting on its rollout workers checks whether to stop


class NoEpisodeFinished(RuntimeError):
    """The evaluation was stopped before its first episode finished: there is nothing to summarize."""


def _never() -> bool:
    return False


def clear_evaluation_outputs(out: Path) -> list[Path]:
    """Delete what an earlier evaluation left in `out` (EVALUATION_OUTPUTS), so no file of it sits beside the new one."""
    removed = sorted({path for pattern in EVALUATION_OUTPUTS for path in out.glob(pattern)})
    for path in removed:
        path.unlink()
    return removed


def _to_numpy(action) -> np.ndarray:
    if torch.is_tensor(action):
        return action.detach().to("cpu", torch.float64).numpy()
    return np.asarray(action, dtype=np.float64)


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _run_episode(
    env, policy, seed: int, max_timesteps: int, frame_camera, frame_size, frame_steps=None, should_stop=_never
) -> dict | None:
    """Roll out one episode; returns its record, including per-step timings, EE path, actions, rewards and frames,
    or None when `should_stop()` turns true before its last step.

    Frames are rendered for people by `frame_camera` (None: no frames) at `frame_size`, apart from the policy's own
    camera images: after the reset and every step, or only at the step numbers in `frame_steps`.
    """
    frames = []

    def capture(t: int) -> None:
        if frame_camera and (frame_steps is None or t in frame_steps):
            frames.append(env.render_image(frame_camera, size=frame_size))

    policy.reset()
    obs, _ = env.reset(seed=seed)
    action_dim = env.action_space.shape[0]
    has_ee, has_objects = hasattr(env, "end_effector_positions"), hasattr(env, "object_positions")
    ee_path = [env.end_effector_positions()] if has_ee else []
    object_path = [env.object_positions()] if has_objects else []
    capture(0)
    timings = {key: [] for key in TIMING_KEYS}
    rewards, actions = [], []
    aborted = None
    # Envs that render inside reset/step report that time as `last_observe_ms`; it is split out of the step.
    obs_ms = getattr(env, "last_observe_ms", 0.0)
    for _ in range(max_timesteps):
        if should_stop():
            return None
        policy_start = time.perf_counter()
        action = policy.select_action(obs)
        policy_ms = (time.perf_counter() - policy_start) * 1e3
        preprocess_ms = float(getattr(policy, "last_preprocess_ms", 0.0) or 0.0)
        try:
            action = check_action(_to_numpy(action), action_dim)
        except InvalidActionError as error:
            aborted = str(error)
            break
        step_start = time.perf_counter()
        try:
            # terminated/truncated do not end the loop: every episode runs max_timesteps steps (unless aborted), so
            # its return and max reward cover the same horizon whatever the env reports.
            obs, reward, _, _, _ = env.step(action)
        except SimulationDivergedError as error:
            aborted = str(error)
            break
        step_ms = (time.perf_counter() - step_start) * 1e3
        next_obs_ms = getattr(env, "last_observe_ms", 0.0)
        timings["obs_read_ms"].append(obs_ms)
        timings["preprocess_ms"].append(preprocess_ms)
        timings["inference_ms"].append(policy_ms - preprocess_ms)
        timings["env_step_ms"].append(step_ms - next_obs_ms)
        timings["loop_total_ms"].append(obs_ms + policy_ms + step_ms - next_obs_ms)
        obs_ms = next_obs_ms
        rewards.append(reward)
        actions.append(action)
        if has_ee:
            ee_path.append(env.end_effector_positions())
        if has_objects:
            object_path.append(env.object_positions())
        capture(len(rewards))
    max_reward = max(rewards, default=0.0)
    return {
        "seed": seed,
        "return": float(sum(rewards)),
        "max_reward": float(max_reward),
        "success": aborted is None and max_reward >= env.max_reward,
        "steps": len(rewards),
        "aborted": aborted,
        "timings": timings,
        "ee_path": np.asarray(ee_path),  # (steps + 1, 2, 3): left, right end effectors (fingertips in the sim)
        "object_path": np.asarray(object_path),  # (steps + 1, M, 3): the task's objects
        "actions": np.asarray(actions).reshape(len(actions), action_dim),  # (steps, action_dim)
        "rewards": rewards,
        "frames": frames,
    }


class _EpisodeRunner:
    """Owns one env; runs episode i (seed `seed + i`) and writes its artifacts. One per process."""

    def __init__(self, policy, env_kwargs: dict, seed: int, max_timesteps, out, record_video, video_camera,
                 video_size, video_episodes, trajectory_image, trajectory_camera):
        self.policy = policy
        self.env = make_env(**env_kwargs)
        self.seed = seed
        self.max_timesteps = self.env.episode_len if max_timesteps is None else int(max_timesteps)
        for camera, wanted in ((video_camera, record_video), (trajectory_camera, trajectory_image and out)):
            if wanted and camera not in self.env.available_cameras:
                self.close()  # else its renderer's GL context reports its own error at interpreter exit, after this one
                raise ValueError(
                    f"Unknown camera {camera!r}; available cameras: {', '.join(self.env.available_cameras)}."
                )
        self.out = out
        self.video_camera = video_camera if record_video else None
        self.video_size = tuple(video_size)
        self.video_episodes = video_episodes
        self.trajectory_image = trajectory_image
        self.trajectory_camera = trajectory_camera

    def __call__(self, i: int, should_stop: Callable[[], bool] = _never) -> dict | None:
        """Episode i's record (EPISODE_KEYS + timings + artifact paths), or None when `should_stop()` turned true
        during it; frames stay in this process."""
        # The policy's sampling noise is seeded per episode, so episode i acts the same whichever process runs it.
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(self.seed + i)
            record = _run_episode(
                self.env, self.policy, self.seed + i, self.max_timesteps, *self._frames_to_render(i),
                should_stop=should_stop,
            )
        if record is None:
            return None
        artifacts = {"trajectory_data": [], "trajectory_images": [], "videos": [], "thumbnails": []}
        if self.out is not None:
            self._write_artifacts(i, record, artifacts)
        return {
            **{key: record[key] for key in EPISODE_KEYS},
            "timings": record["timings"],
            "artifacts": artifacts,
            "max_timesteps": self.max_timesteps,
            "task_max_reward": self.env.max_reward,
        }

    def _full_video(self, i: int) -> bool:
        return self.video_camera is not None and (self.video_episodes is None or i < self.video_episodes)

    def _frames_to_render(self, i: int) -> tuple:
        """(camera, size, steps): every step at video size for a video, else only the contact sheet's frames."""
        if self._full_video(i):
            return self.video_camera, self.video_size, None
        sheet_steps = set(np.linspace(0, self.max_timesteps, SHEET_FRAMES).round().astype(int).tolist())
        return self.video_camera, media.SHEET_THUMBNAIL_HW, sheet_steps

    def _outcome(self, record: dict) -> str:
        if record["success"]:
            return f"success, return {record['return']:.0f}"
        return f"failed (max reward {record['max_reward']:.0f}/{self.env.max_reward:.0f}), return {record['return']:.0f}"

    def _write_artifacts(self, i: int, record: dict, artifacts: dict) -> None:
        """trajectory_<i>.npz always; trajectory_<i>.png, episode_<i>.gif/.mp4 and contact-sheet thumbnails as asked."""
        out, env = self.out, self.env
        headline = f"{getattr(env, 'task_name', 'episode')} seed {record['seed']}: {self._outcome(record)}"
        npz_path = out / f"trajectory_{i}.npz"
        np.savez(
            npz_path, ee_positions=record["ee_path"], object_positions=record["object_path"], actions=record["actions"],
            seed=record["seed"],
        )
        artifacts["trajectory_data"].append(str(npz_path))
        if self.trajectory_image and hasattr(env, "render_trajectory_image") and len(record["ee_path"]):
            paths = [record["ee_path"][:, arm] for arm in range(record["ee_path"].shape[1])]
            extra = {}  # an env without objects keeps the three-argument render_trajectory_image
            if len(record["object_path"]):
                extra["object_paths"] = list(record["object_path"].transpose(1, 0, 2))  # M x (steps + 1, 3)
            image = env.render_trajectory_image(paths, self.trajectory_camera, size=self.video_size, **extra)
            image = media.legend(media.caption(image, [headline]), getattr(env, "trajectory_legend", ()))
            png_path = out / f"trajectory_{i}.png"
            Image.fromarray(image).save(png_path)
            artifacts["trajectory_images"].append(str(png_path))
        if record["frames"] and self._full_video(i):
            total = len(record["frames"]) - 1
            frames = [
                media.caption(frame, [headline, f"step {t}/{total}, reward {record['rewards'][t - 1] if t else 0:.0f}"])
                for t, frame in enumerate(record["frames"])
            ]
            gif_path, mp4_path = out / f"episode_{i}.gif", out / f"episode_{i}.mp4"
            media.write_video(gif_path, frames)
            media.write_video(mp4_path, frames)
            artifacts["videos"].extend([str(gif_path), str(mp4_path)])
        if record["frames"]:
            outcome = self._outcome(record).replace(", return", "\nreturn")
            label = f"episode {i}, seed {record['seed']}\n{outcome}"
            artifacts["thumbnails"].append((label, media.thumbnails(record["frames"], SHEET_FRAMES)))

    def close(self):
        self.env.close()


_worker_runner: _EpisodeRunner | None = None  # the env and policy of a rollout worker process
_worker_setup_error: Exception | None = None  # why the worker could not build them


def _init_worker(runner_kwargs: dict, torch_threads: int):
    global _worker_runner, _worker_setup_error
    init_worker_process(torch_threads)  # a Ctrl-C reaches the whole process group; the parent ends its workers
    try:
        _worker_runner = _EpisodeRunner(**runner_kwargs)
    except Exception as error:
        # Raised here it would only break the pool; raised by the first episode it reaches the caller as itself.
        _worker_setup_error = error


def _run_in_worker(i: int) -> dict:
    if _worker_setup_error is not None:
        raise _worker_setup_error
    return _worker_runner(i)


def _episode_records(runner_kwargs: dict, num_episodes: int, num_workers: int, should_stop: Callable[[], bool]):
    """Yield the records of episodes 0..num_episodes-1 in order, from this process or from `num_workers`, until
    `should_stop()` turns true (checked every env step in this process, every STOP_POLL_S with workers)."""
    if num_workers <= 1:
        runner = _EpisodeRunner(**runner_kwargs)
        try:
            for i in range(num_episodes):
                record = runner(i, should_stop)
                if record is None:
                    return
                yield record
        finally:
            runner.close()
        return
    # spawn: a forked child would inherit the parent's GL context and torch thread pool, neither fork-safe.
    threads = max(1, torch.get_num_threads() // num_workers)
    pool = ProcessPoolExecutor(
        max_workers=num_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(runner_kwargs, threads),
    )
    futures = [pool.submit(_run_in_worker, i) for i in range(num_episodes)]
    completed = False
    try:
        for future in futures:
            while True:
                if should_stop():
                    return
                try:
                    record = future.result(timeout=STOP_POLL_S)
                    break
                except TimeoutError:
                    pass
            yield record
        completed = True
    finally:
        if not completed:
            # Stopped, or an error: the running episodes are of no use, and a worker would finish its episode before
            # leaving. ProcessPoolExecutor has no public way to end its workers before Python 3.14.
            for process in list(pool._processes.values()):
                process.kill()
        pool.shutdown(cancel_futures=True)


def _remove_abandoned_artifacts(out: Path, finished: int) -> None:
    """Delete the files of the episodes after the first `finished` (a worker wrote them ahead of the order, or was
    ended while writing them), so that a stopped evaluation's output dir holds what its summary covers."""
    for path in out.iterdir():
        match = EPISODE_ARTIFACT.fullmatch(path.name)
        if match and int(match.group(1)) >= finished:
            path.unlink()


def evaluate_policy(
    policy,
    task: str,
    num_episodes: int,
    seed: int = 1000,
    image_size: Sequence[int] = (96, 96),
    camera_names: Sequence[str] = ("r_vis", "top", "front"),
    shadows: bool = False,
    max_timesteps: int | None = None,
    output_dir: str | Path | None = None,
    record_video: bool = False,
    video_camera: str = "front",
    video_size: Sequence[int] = (480, 640),
    video_episodes: int | None = None,
    trajectory_image: bool = True,
    trajectory_camera: str = "front",
    progress: bool = True,
    num_workers: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Roll `policy` out for `num_episodes` episodes of `task` (episode i uses seed `seed + i`).

    With `num_workers` > 1 the episodes run in that many processes, each with its own env and a copy of the
    policy; each episode seeds torch with its env seed, so the results equal a sequential run's.
    Returns the summary: successes, success_rate with its 95 % Wilson interval, stage_counts (episodes reaching
    each reward level), mean_return, mean_max_reward, num_episodes, mean_inference_ms, the per-step timing means (ms)
    and per-episode entries (seed, outcome, ...); with `output_dir`, also the artifact paths
    (summary.json, trajectory_<i>.npz/.png, and with `record_video` episode_<i>.gif/.mp4 for the first
    `video_episodes` episodes (None: all) plus contact_sheet.png with a frame strip of every episode).
    Videos and trajectory images are rendered at `video_size` (H, W) for people; the policy's cameras keep theirs.

    `should_stop`: polled while the episodes run; once it is true, the running episodes are abandoned and the summary
    covers the k episodes finished before them (those of a run with num_episodes=k), with "partial": true and
    "requested_episodes"; NoEpisodeFinished when k = 0.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}.")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
    should_stop = should_stop or _never
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        removed = clear_evaluation_outputs(out)
        if removed:
            print(f"Deleted {len(removed)} files of an earlier evaluation in {out} (e.g. {removed[0].name}).")
    runner_kwargs = dict(
        policy=policy,
        env_kwargs=dict(task=task, image_size=image_size, camera_names=camera_names, shadows=shadows),
        seed=seed,
        max_timesteps=max_timesteps,
        out=out,
        record_video=record_video,
        video_camera=video_camera,
        video_size=video_size,
        video_episodes=video_episodes,
        trajectory_image=trajectory_image,
        trajectory_camera=trajectory_camera,
    )

    was_training = getattr(policy, "training", None)
    if hasattr(policy, "eval"):
        policy.eval()
    episodes, timings = [], {key: [] for key in TIMING_KEYS}
    artifacts = {"trajectory_data": [], "trajectory_images": [], "videos": [], "thumbnails": []}
    bar = tqdm(total=num_episodes, desc=f"rollout {task}", unit="ep", disable=not progress)
    try:
        for record in _episode_records(runner_kwargs, num_episodes, min(num_workers, num_episodes), should_stop):
            for key in TIMING_KEYS:
                timings[key].extend(record["timings"][key])
            for key, paths in record["artifacts"].items():
                artifacts[key].extend(paths)
            episodes.append({key: record[key] for key in EPISODE_KEYS})
            bar.update(1)
            bar.set_postfix(success=f"{sum(e['success'] for e in episodes)}/{len(episodes)}")
    finally:  # the caller gets its policy back in the mode it had, with empty queues, even after an error
        bar.close()
        if hasattr(policy, "train") and was_training is not None:
            policy.train(was_training)
        policy.reset()

    finished = len(episodes)
    if out is not None and finished < num_episodes:
        _remove_abandoned_artifacts(out, finished)
    if not finished:
        raise NoEpisodeFinished(f"Stopped before the first episode finished: no summary{f' in {out}' if out else ''}.")
    successes = sum(e["success"] for e in episodes)
    stages = range(1, int(record["task_max_reward"]) + 1)
    summary = {
        "task": task,
        "num_episodes": finished,
        "requested_episodes": num_episodes,
        "partial": finished < num_episodes,  # stopped: the first `finished` episodes only
        "seed": seed,
        "max_timesteps": record["max_timesteps"],
        "num_workers": num_workers,
        "successes": successes,
        "success_rate": successes / finished,
        "success_interval": list(wilson_interval(successes, finished)),  # 95 %
        # stage_counts[s - 1]: episodes whose reward reached s (the task's stages: touch, lift, ...)
        "stage_counts": [sum(e["max_reward"] >= stage for e in episodes) for stage in stages],
        "mean_return": _mean([e["return"] for e in episodes]),
        "mean_max_reward": _mean([e["max_reward"] for e in episodes]),
        "mean_inference_ms": _mean(timings["inference_ms"]),
        **{key: _mean(values) for key, values in timings.items()},
        "episodes": episodes,
    }
    if out is not None:
        strips = artifacts.pop("thumbnails")
        if strips:
            sheet_path = out / "contact_sheet.png"
            Image.fromarray(media.contact_sheet(strips)).save(sheet_path)
            artifacts["contact_sheet"] = str(sheet_path)
        summary.update(artifacts, summary_path=str(out / "summary.json"))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
