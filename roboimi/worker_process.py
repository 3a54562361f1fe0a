"""Worker processes that die with the process that started them and leave stop signals to it."""
import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies, even by `kill -9` (Linux; elsewhere a no-op).

    Called first in every worker process, so rollout and recording workers never outlive the command that started
    them holding gigabytes of simulator and policy state.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def init_worker_process(torch_threads: int) -> None:
    """First call of a spawned worker: it dies with its parent, leaves stop signals to it and runs `torch_threads`
    torch threads (the parent's share of the cores)."""
    import torch  # here, not at the top: recording workers never need torch

    die_with_parent()
    ignore_stop_signals()
    torch.set_num_threads(torch_threads)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """Worker init (DataLoader and rollout workers): a Ctrl-C reaches the whole process group, and a worker it killed
    would break the batch or pool the main process is finishing; the main process stops its workers itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
