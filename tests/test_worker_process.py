"""Worker processes die with their parent, even when the parent is killed with SIGKILL."""
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A parent that starts two spawned pool workers the way the evaluator and the recorder do (the initializer calls
# die_with_parent), prints their pids and waits to be killed.
PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from roboimi.worker_process import die_with_parent

def pid(_):
    time.sleep(0.5)
    return os.getpid()

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent)
    print(" ".join(str(p) for p in set(pool.map(pid, range(4)))), flush=True)
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited and only waits to be reaped


@unittest.skipUnless(sys.platform.startswith("linux"), "PR_SET_PDEATHSIG is Linux's")
class DieWithParentTest(unittest.TestCase):
    def test_workers_are_gone_soon_after_their_parent_is_killed_with_sigkill(self):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        with tempfile.TemporaryDirectory() as tmp:  # a file: spawned workers import the parent's main module
            script = Path(tmp) / "parent.py"
            script.write_text(PARENT)
            parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
            self.addCleanup(parent.kill)
            self.check_workers_die_with(parent)

    def check_workers_die_with(self, parent: subprocess.Popen):
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        self.assertTrue(workers and all(alive(pid) for pid in workers))
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse([pid for pid in workers if alive(pid)], "workers outlived their killed parent")


if __name__ == "__main__":
    unittest.main()
