"""Stop a training loop at a step boundary on SIGINT (Ctrl-C) or SIGTERM, so the run can checkpoint and resume (and
an evaluation, so it can summarize the episodes it finished)."""
import signal
import sys
import threading

from roboimi.worker_process import STOP_SIGNALS


class GracefulStop:
    """While active, the first SIGINT / SIGTERM only sets `signum` and prints `plan`, what the loop will do about it;
    the loop checks it (the trainer between steps, an evaluation while its episodes run). A second one restores the
    default handlers and stops at once (KeyboardInterrupt for SIGINT, the default action for SIGTERM).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(
        self, plan: str = "stopping after this step with a checkpoint (send it again to stop at once, without one)"
    ):
        self.plan = plan
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second signal
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"\nReceived {signal.Signals(signum).name}: {self.plan}.", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None
