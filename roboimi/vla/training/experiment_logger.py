"""Metrics sink of train_vla.py: a JSON-lines file always, SwanLab when enabled.

A logging failure warns and never stops training. An inactive logger (non-zero ranks under torchrun) does nothing.
"""
import json
import math
import time
import warnings
from pathlib import Path

from roboimi.atomic_file import atomic_write_path
from roboimi.vla.training.settings import flatten_config

SWANLAB_MODES = ("disabled", "offline", "local", "cloud")


def _logged_step(line: str) -> float:
    """The step of a line of the JSON-lines file; inf for a line that a kill cut short."""
    try:
        return json.loads(line)["step"] if line.endswith("\n") else math.inf
    except (ValueError, KeyError, TypeError):
        return math.inf


class ExperimentLogger:
    """`config` goes to SwanLab flattened to dotted keys (agent.head.n_emb, train.lr, ...), one column each in the
    experiments table; `group` gathers related experiments (a training run and its evaluations)."""

    def __init__(
        self, run_dir, *, use_swanlab: bool, project: str, mode: str, experiment_name: str, config: dict,
        active: bool = True, group: str | None = None, jsonl_name: str = "logs.json.txt",
    ):
        self.jsonl_path = Path(run_dir) / jsonl_name
        self.active = active
        self._swanlab = None
        if not active:
            return
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if not use_swanlab:
            return
        if mode not in SWANLAB_MODES:
            raise ValueError(f"Unknown train.swanlab_mode={mode!r}. Use one of: {', '.join(SWANLAB_MODES)}.")
        try:
            import swanlab

            swanlab.init(
                project=project,
                name=experiment_name,
                group=group,
                config=flatten_config(config),
                # SwanLab calls its account-backed mode "online"; without an explicit mode it asks for a login.
                mode="online" if mode == "cloud" else mode,
                log_dir=str(Path(run_dir) / "swanlog"),
            )
            self._swanlab = swanlab
        except Exception as exc:
            self._warn("init", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        warnings.warn(f"SwanLab {what} failed ({exc!r}); training continues, scalars still go to {self.jsonl_path}.")

    def drop_records_after(self, step: int) -> int:
        """Delete the lines of the JSON-lines file logged after `step`, and a line a kill cut short; returns how many.

        A run continued from its step-`step` checkpoint trains the later steps again and logs them anew: without
        this, a run killed between two checkpoints would hold those steps twice. SwanLab's own log only appends.
        """
        if not self.active or not self.jsonl_path.is_file():
            return 0
        lines = self.jsonl_path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_step(line) <= step]
        if len(kept) < len(lines):
            with atomic_write_path(self.jsonl_path) as tmp_path:
                tmp_path.write_text("".join(kept))
        return len(lines) - len(kept)

    def log_scalars(self, scalars: dict, step: int) -> None:
        if not self.active:
            return
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
        try:
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            warnings.warn(f"Could not append to {self.jsonl_path} ({exc!r}); training continues.")
        if self._swanlab is not None:
            try:
                self._swanlab.log(dict(scalars), step=step)
            except Exception as exc:
                self._warn("log", exc)

    def log_images(self, key: str, image_paths: list, step: int) -> None:
        if self._swanlab is None or not image_paths:
            return
        try:
            images = [self._swanlab.Image(str(p), caption=Path(p).stem) for p in image_paths]
            self._swanlab.log({key: images}, step=step)
        except Exception as exc:
            self._warn("image log", exc)

    def log_gif(self, key: str, gif_path, step: int) -> None:
        if self._swanlab is None:
            return
        try:
            self._swanlab.log({key: self._swanlab.Video(str(gif_path), caption=Path(gif_path).stem)}, step=step)
        except Exception as exc:
            self._warn("video log", exc)

    def log_rollout_summary(self, prefix: str, summary: dict, step: int) -> None:
        """The evaluator's summary under `prefix/`: success, returns, inference time, trajectory images, contact
        sheet and GIFs (training-time validation logs `rollout/`, eval_vla.py `eval/`)."""
        self.log_scalars(
            {
                f"{prefix}/success_rate": summary["success_rate"],
                f"{prefix}/avg_reward": summary["mean_return"],
                f"{prefix}/max_reward": summary["mean_max_reward"],
                f"{prefix}/avg_inference_ms": summary["mean_inference_ms"],
            },
            step,
        )
        self.log_images(f"{prefix}/trajectory", summary.get("trajectory_images", []), step)
        self.log_images(f"{prefix}/contact_sheet", [summary["contact_sheet"]] if "contact_sheet" in summary else [], step)
        for gif in [v for v in summary.get("videos", []) if str(v).endswith(".gif")]:
            self.log_gif(f"{prefix}/video", gif, step)

    def finish(self) -> None:
        if self._swanlab is None:
            return
        try:
            self._swanlab.finish()
        except Exception as exc:
            self._warn("finish", exc)
