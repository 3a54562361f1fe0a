"""Worker processes that die with the process that started them."""
import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies, even by `kill -9` (Linux; elsewhere a no-op).

    Called first in every worker process, so rollout and recording workers never outlive the command that started
    them holding gigabytes of simulator and policy state.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
