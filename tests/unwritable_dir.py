"""A directory this process cannot create anything in, for the errors that name an unwritable output setting."""
import os
import tempfile
import unittest
from pathlib import Path

ROOT_PROOF_DIR = Path("/sys")  # sysfs: not even root may create a directory at its top


def unwritable_dir(test: unittest.TestCase) -> Path:
    """A temporary directory with mode 0o555; for a user whom permission bits do not stop (root), /sys. Skips `test`
    where this user could create a directory in either."""
    tmp = tempfile.TemporaryDirectory()
    test.addCleanup(tmp.cleanup)
    read_only = Path(tmp.name) / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    test.addCleanup(read_only.chmod, 0o755)  # runs first: the cleanup can then delete it
    if not os.access(read_only, os.W_OK):
        return read_only
    probe = ROOT_PROOF_DIR / "roboimi_test"
    try:
        probe.mkdir()
    except OSError:
        return ROOT_PROOF_DIR
    probe.rmdir()
    test.skipTest(f"this user can create directories in {read_only} and {ROOT_PROOF_DIR}")
