"""Atomic file writes: a crash or an exception never leaves a half-written file at the destination; and output
directories whose setting is named when they cannot be created."""
import errno
import os
import uuid
from contextlib import contextmanager
from pathlib import Path


TEMP_FILE_GLOB = ".*.tmp"  # what an interrupted write leaves next to its destination


def remove_stale_temp_files(directory) -> list[Path]:
    """Delete what interrupted writes left in `directory`; only safe while no write there is in flight."""
    stale = sorted(Path(directory).glob(TEMP_FILE_GLOB))
    for path in stale:
        path.unlink()
    return stale


@contextmanager
def atomic_write_path(path):
    """Yield a temporary path next to `path`; after the block, fsync it and os.replace it onto `path`.

    Any writer that takes a path works (torch.save, h5py.File, open). On error the temporary file is removed and
    an existing file at `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


class UnusableDirError(OSError):
    """An output dir that cannot be created or written into; its message names the setting, the path and the fix."""


def create_dir(path, setting: str) -> Path:
    """mkdir -p `path` and check that this user can write into it; else an UnusableDirError naming `setting`, the
    path, the cause and the fix (the OS's own [Errno 30] or [Errno 17] names neither the setting nor the fix)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        file = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        cause = f"{file} is a file" if file else f"{error.strerror}: {error.filename}"
        raise UnusableDirError(error.errno, _unusable_dir(setting, path, cause)) from None
    if not os.access(path, os.W_OK):
        raise UnusableDirError(errno.EACCES, _unusable_dir(setting, path, "a read-only file system or no write permission"))
    return path


def _unusable_dir(setting: str, path: Path, cause: str) -> str:
    return (
        f"Cannot write into {setting}={path} ({cause}). Pass a {setting} that is a writable directory, or a path "
        f"where one can be created."
    )
