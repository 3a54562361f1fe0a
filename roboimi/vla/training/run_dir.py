"""One training run per run dir: an exclusive lock, the checkpoint to resume from, retention of step files.

checkpoints/ holds step_<N>.pt (every save), last.pt (a copy of the newest), best_rollout.pt and, after a
non-finite loss, nonfinite_step_<N>.pt. A kill during a write leaves only a hidden temporary file, never a partial
checkpoint (roboimi.atomic_file).
"""
import fcntl
import os
import re
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from roboimi.atomic_file import create_dir

STEP_CHECKPOINT = re.compile(r"step_(\d+)\.pt")
LOCK_FILE = ".run.lock"


class RunDirLock:
    """flock on <run_dir>/.run.lock for the run's lifetime; the file names the holder's pid.

    The kernel drops the lock when the process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(
        self,
        run_dir: Path,
        holder: str = "another training process",
        fix: str = "Wait for it, stop it, or pick another hydra.run.dir.",
    ):
        """`holder` and `fix` word the refusal: who else uses the directory, and what to do about it."""
        self.path = Path(run_dir) / LOCK_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # read-only, no permission, or a file where the directory should be
            raise OSError(
                error.errno,
                f"Cannot write into {self.path.parent} ({error.strerror}): it must be a directory this user can "
                f"write. {fix}",
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = self.path.read_text().strip() or "unknown"
            os.close(self._fd)
            raise RuntimeError(f"{self.path.parent} is in use by {holder} (pid {pid}). {fix}") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class CreateRunDir(Callback):
    """Hydra callback of train_vla.py (conf/config.yaml): creates hydra.run.dir, or hydra.sweep.dir under -m, before
    Hydra does, so that a directory that cannot be created ends the command with one line naming the setting and the
    fix rather than Hydra's traceback of a bare OSError."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._create(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._create(config, "hydra.sweep.dir")

    @staticmethod
    def _create(config: DictConfig, setting: str) -> None:
        # The dir's ${hydra:runtime.choices.agent} reads this; Hydra sets the same config before creating the dir.
        HydraConfig.instance().set_config(config)
        try:
            create_dir(OmegaConf.select(config, setting), setting)
        except OSError as error:
            # An exception would reach the user as Hydra's traceback of this callback.
            raise SystemExit(error.strerror) from None


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """step_<N>.pt files, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob("step_*.pt") if (m := STEP_CHECKPOINT.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def checkpoints_newest_first(ckpt_dir: Path) -> list[Path]:
    """step_<N>.pt by step, newest first, with last.pt before every step file that is not newer than it.

    Every save writes step_<N>.pt before last.pt, so a kill between the two leaves the step file newer.
    """
    candidates = step_checkpoints(ckpt_dir)[::-1]
    last = Path(ckpt_dir) / "last.pt"
    if last.is_file():
        newer_steps = [p for p in candidates if p.stat().st_mtime_ns >= last.stat().st_mtime_ns]
        candidates.insert(len(newer_steps), last)
    return candidates


# What a run writes into its run dir; train.overwrite=true deletes these before starting over.
RUN_OUTPUTS = ("checkpoints", "logs.json.txt", "swanlog", "rollouts", "policy.pt", "eval")


def clear_run_outputs(run_dir: Path) -> list[Path]:
    """Delete what an earlier run left in `run_dir` (RUN_OUTPUTS); returns what was deleted."""
    removed = [Path(run_dir) / name for name in RUN_OUTPUTS if (Path(run_dir) / name).exists()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def prune_step_checkpoints(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step_<N>.pt files; last.pt and best_rollout.pt stay."""
    removed = step_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []
    for path in removed:
        path.unlink()
    return removed
