"""Expert episode recorder: ACT-layout files, consistent lengths, atomic writes and resuming."""

import io
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stdout
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from roboimi.demos.record_sim_episodes import compose_config, main, record_episodes, recorder_settings
from tests.unwritable_dir import unwritable_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "roboimi" / "demos" / "record_sim_episodes.py"


def run_script(args: list[str], cwd: Path, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """record_sim_episodes.py run as a file, the way the Makefile and the benchmarks run it.

    `file_size_limit`: RLIMIT_FSIZE in bytes, a full disk for any file that would grow past it. With SIGXFSZ ignored
    such a write fails with EFBIG, as one onto a full disk fails with ENOSPC, rather than killing the process.
    """

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size if file_size_limit is not None else None,
    )


def mount_tmpfs(test: unittest.TestCase, directory: Path, size: int) -> None:
    """A tmpfs of `size` bytes at `directory` until `test` ends; skips `test` where this user may not mount."""
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True)
    except FileNotFoundError:
        test.skipTest("no mount command")
    if mounted.returncode:
        test.skipTest(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    test.addCleanup(subprocess.run, ["umount", str(directory)], check=True)


class RecorderTest(unittest.TestCase):
    def test_writes_act_layout_and_resumes(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "sim_transfer"
            kwargs = dict(
                task="sim_transfer", dataset_dir=out, image_size=(16, 20), camera_names=("top",), progress=False
            )
            summary = record_episodes(num_episodes=1, seed=5, **kwargs)
            self.assertEqual((summary["episodes_written"], summary["attempts"], summary["failures"]), (1, 1, 0))
            self.assertEqual(summary["expert_success_rate"], 1.0)

            # An interrupted run: a half-written temporary file of the next episode remains.
            first_mtime = (out / "episode_0.hdf5").stat().st_mtime_ns
            (out / ".episode_1.hdf5.0123abcd.tmp").write_bytes(b"partial")
            summary = record_episodes(num_episodes=2, seed=5, **kwargs)
            self.assertEqual((summary["episodes_written"], summary["episodes_total"], summary["attempts"]), (1, 2, 1))
            self.assertEqual(sorted(p.name for p in out.iterdir()), ["episode_0.hdf5", "episode_1.hdf5"])
            self.assertEqual((out / "episode_0.hdf5").stat().st_mtime_ns, first_mtime)

            for index, seed in ((0, 5), (1, 6)):  # the seed sequence continues after episode 0
                with h5py.File(out / f"episode_{index}.hdf5", "r") as f:
                    expected_attrs = {"sim": True, "task": "sim_transfer", "seed": seed, "success": True, "fps": 50}
                    self.assertEqual(dict(f.attrs), expected_attrs)
                    self.assertEqual(f["observations/qpos"].shape, (400, 14))
                    self.assertEqual(f["observations/qvel"].shape, (400, 14))
                    self.assertEqual(f["observations/env_state"].shape, (400, 7))
                    self.assertEqual(f["action"].shape, (400, 14))
                    self.assertEqual(list(f["observations/images"]), ["top"])
                    images = f["observations/images/top"]
                    self.assertEqual((images.shape, images.dtype), ((400, 16, 20, 3), np.uint8))
                    self.assertEqual(images.chunks, (1, 16, 20, 3))
                    self.assertEqual((images.compression, images.compression_opts), ("gzip", 1))
                    self.assertGreater(images[0].std(), 1.0)  # a rendered scene, not a blank frame

            # Nothing left to do when all requested episodes exist.
            summary = record_episodes(num_episodes=2, seed=5, **kwargs)
            self.assertEqual((summary["episodes_written"], summary["attempts"]), (0, 0))

    def test_resume_refuses_other_settings_and_records_a_corrupt_tail_again(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "demos"
            kwargs = dict(task="sim_transfer", dataset_dir=out, camera_names=("top",), progress=False)
            record_episodes(num_episodes=2, seed=3, image_size=(16, 16), **kwargs)
            with self.assertRaisesRegex(ValueError, r"image_size=\[16, 16\] \(episode_0\.hdf5\); this run asks for image_size=\[24, 24\]"):
                record_episodes(num_episodes=3, seed=3, image_size=(24, 24), **kwargs)
            with self.assertRaisesRegex(ValueError, r"camera_names=\['top'\].*asks for camera_names=\['front', 'top'\]"):
                record_episodes(num_episodes=3, seed=3, image_size=(16, 16), **{**kwargs, "camera_names": ("top", "front")})
            with self.assertRaisesRegex(ValueError, r"task=sim_transfer.*asks for task=sim_insertion"):
                record_episodes(num_episodes=3, seed=3, image_size=(16, 16), **{**kwargs, "task": "sim_insertion"})

            (out / "episode_1.hdf5").write_bytes(b"truncated by a crash")
            with redirect_stdout(io.StringIO()) as printed:
                summary = record_episodes(num_episodes=2, seed=3, image_size=(16, 16), **kwargs)
            self.assertIn("episode_1.hdf5 is unreadable or incomplete", printed.getvalue())
            self.assertEqual((summary["episodes_written"], summary["episodes_total"]), (1, 2))
            with h5py.File(out / "episode_1.hdf5", "r") as f:
                self.assertEqual(f.attrs["seed"], 4)  # recorded again with the seed it had

    def test_parallel_recording_writes_the_files_of_a_sequential_one(self):
        def contents(path: Path) -> dict:
            with h5py.File(path, "r") as f:
                arrays = {}
                f.visititems(lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
                return {"attrs": dict(f.attrs), **arrays}

        with tempfile.TemporaryDirectory() as tmp:
            kwargs = dict(task="sim_transfer", image_size=(16, 20), camera_names=("top",), seed=3, progress=False)
            sequential = record_episodes(num_episodes=3, dataset_dir=Path(tmp) / "seq", **kwargs)
            # Two workers, stopped after two episodes and resumed: the resumed run continues the seed sequence.
            record_episodes(num_episodes=2, dataset_dir=Path(tmp) / "par", num_workers=2, **kwargs)
            parallel = record_episodes(num_episodes=3, dataset_dir=Path(tmp) / "par", num_workers=2, **kwargs)
            self.assertEqual((parallel["episodes_written"], parallel["attempts"]), (1, 1))  # no attempt beyond need
            self.assertEqual(parallel["next_seed"], sequential["next_seed"])
            for index in range(3):
                expected = contents(Path(tmp) / "seq" / f"episode_{index}.hdf5")
                actual = contents(Path(tmp) / "par" / f"episode_{index}.hdf5")
                self.assertEqual(expected.keys(), actual.keys())
                self.assertEqual(actual["attrs"], expected["attrs"])
                for name in expected.keys() - {"attrs"}:
                    np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"episode {index}: {name}")
            with self.assertRaisesRegex(ValueError, "num_workers must be >= 1"):
                record_episodes(num_episodes=1, dataset_dir=Path(tmp) / "bad", num_workers=0, **kwargs)

    def test_an_error_while_recording_closes_the_renderers(self):
        script = (
            "import sys\n"
            "from roboimi.demos import record_sim_episodes as recorder\n"
            "def fail(*args, **kwargs):\n"
            "    raise OSError('disk gone')\n"
            "recorder.write_episode = fail\n"
            "recorder.record_episodes('sim_transfer', 1, sys.argv[1], image_size=(16, 16), camera_names=['top'], progress=False)\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            result = subprocess.run([sys.executable, "-c", script, tmp], env=env, capture_output=True, text=True, timeout=300)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stderr.strip().splitlines()[-1], "OSError: disk gone")  # the error is the last line
        self.assertNotIn("Exception ignored", result.stderr)

    def test_a_dataset_dir_that_is_a_file_is_named_with_the_fix(self):
        with tempfile.TemporaryDirectory() as tmp:
            a_file = Path(tmp) / "demos"
            a_file.write_text("")
            path = re.escape(str(a_file))
            message = (rf"^\[Errno 17\] Cannot write into dataset_dir={path} \({path} is a file\)\. Pass a dataset_dir "
                       rf"that is a writable directory, or a path where one can be created\.$")
            with self.assertRaisesRegex(OSError, message):
                record_episodes("sim_transfer", 1, a_file, camera_names=["top"], progress=False)

    def test_a_dataset_dir_on_a_read_only_file_system_is_named_with_the_fix(self):
        dataset_dir = unwritable_dir(self) / "demos"
        message = rf"Cannot write into dataset_dir={re.escape(str(dataset_dir))} \(.+\)\. Pass a dataset_dir that is a"
        with self.assertRaisesRegex(OSError, message):
            record_episodes("sim_transfer", 1, dataset_dir, camera_names=["top"], progress=False)
        # From the command line, the same line is the last thing on the screen, without a traceback.
        with self.assertRaises(SystemExit) as stopped:
            main(["task=sim_transfer", "num_episodes=1", "camera_names=[]", f"dataset_dir={dataset_dir}"])
        self.assertRegex(str(stopped.exception.code), "^" + message)

    def test_rejects_unknown_compression(self):
        with tempfile.TemporaryDirectory() as tmp, self.assertRaisesRegex(ValueError, "gzip"):
            record_episodes("sim_transfer", 1, tmp, compression="zstd")


class FullDiskTest(unittest.TestCase):
    """A dataset_dir that fills up mid-recording: one line naming it, the bytes needed and the fix, a non-zero exit,
    the complete episodes intact and no temporary file, and the same command continues once there is room."""

    def assert_stopped_cleanly(self, result, dataset_dir: Path, cause: str, complete: int, requested: int) -> int:
        """Checks the failed run; returns the bytes its message says the next episode needs."""
        self.assertEqual(result.returncode, 1, result.stderr)
        for crash in ("Traceback", "Exception ignored", "Segmentation", "Fatal Python error"):
            self.assertNotIn(crash, result.stderr)
        last_line = result.stderr.strip().splitlines()[-1]
        message = (
            rf"No room in dataset_dir={re.escape(str(dataset_dir))} for episode_{complete}\.hdf5 \({cause}\): it "
            rf"needs ([\d,]+) bytes \(\d+\.\d MiB\), about \d+\.\d MiB for the {requested - complete} episode\(s\) "
            rf"still to record\. Free that space or pass another dataset_dir, then re-run the same command: it "
            rf"continues after the {complete} complete episode\(s\)\."
        )
        self.assertRegex(last_line, f"^{message}$")
        # Only the complete episodes: the failed write left no temporary file.
        self.assertEqual(sorted(p.name for p in dataset_dir.iterdir()), [f"episode_{i}.hdf5" for i in range(complete)])
        return int(re.match(message, last_line).group(1).replace(",", ""))

    def test_a_file_size_limit_ends_in_one_line_and_the_same_command_continues(self):
        # State-only episodes record in a fraction of a second; the write path is the one camera episodes take.
        settings = dict(task="sim_transfer", camera_names=(), seed=7, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "demos"
            record_episodes(num_episodes=1, dataset_dir=out, **settings)
            first = (out / "episode_0.hdf5").read_bytes()
            args = ["task=sim_transfer", "num_episodes=3", f"dataset_dir={out}", "camera_names=[]", "seed=7"]
            result = run_script(args, Path(tmp), file_size_limit=len(first) // 2)
            needed = self.assert_stopped_cleanly(result, out, "File too large", complete=1, requested=3)
            self.assertEqual((out / "episode_0.hdf5").read_bytes(), first)

            summary = record_episodes(num_episodes=3, dataset_dir=out, **settings)
            self.assertEqual((summary["episodes_written"], summary["attempts"]), (2, 2))
            self.assertEqual((out / "episode_1.hdf5").stat().st_size, needed)  # state-only episodes are all one size
            with h5py.File(out / "episode_2.hdf5", "r") as f:
                self.assertEqual(f.attrs["seed"], 9)  # the seeds went on where the complete episodes ended

    def test_a_full_tmpfs_ends_in_one_line_and_the_same_command_continues(self):
        """A real ENOSPC, where this user may mount a file system; the file-size limit above stands in elsewhere."""
        settings = dict(task="sim_transfer", camera_names=(), seed=0, progress=False)
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)  # after the unmount: cleanups run last in, first out
        record_episodes(num_episodes=1, dataset_dir=Path(tmp.name) / "first", **settings)
        first = (Path(tmp.name) / "first" / "episode_0.hdf5").read_bytes()
        out = Path(tmp.name) / "demos"
        out.mkdir()
        mount_tmpfs(self, out, size=len(first) * 3 // 2)  # room for one episode, not two
        (out / "episode_0.hdf5").write_bytes(first)
        args = ["task=sim_transfer", "num_episodes=2", f"dataset_dir={out}", "camera_names=[]", "seed=0"]
        result = run_script(args, Path(tmp.name))
        self.assert_stopped_cleanly(result, out, "No space left on device", complete=1, requested=2)
        self.assertEqual((out / "episode_0.hdf5").read_bytes(), first)

        subprocess.run(["mount", "-o", f"remount,size={len(first) * 3}", str(out)], check=True)
        summary = record_episodes(num_episodes=2, dataset_dir=out, **settings)
        self.assertEqual((summary["episodes_written"], summary["episodes_total"], summary["next_seed"]), (1, 2, 2))

    @pytest.mark.slow
    def test_camera_episodes_from_workers_stop_as_cleanly(self):
        """The recording the problem was met with: camera episodes, attempts in worker processes (about 20 s)."""
        settings = dict(task="sim_transfer", image_size=(16, 16), camera_names=("top",), seed=0, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "demos"
            record_episodes(num_episodes=1, dataset_dir=out, **settings)
            first = (out / "episode_0.hdf5").read_bytes()
            args = ["task=sim_transfer", "num_episodes=3", f"dataset_dir={out}", "camera_names=[top]",
                    "image_size=[16,16]", "seed=0", "num_workers=2"]
            result = run_script(args, Path(tmp), file_size_limit=len(first) // 2)
            needed = self.assert_stopped_cleanly(result, out, "File too large", complete=1, requested=3)
            self.assertAlmostEqual(needed, len(first), delta=len(first) // 10)  # images compress a little differently
            self.assertEqual((out / "episode_0.hdf5").read_bytes(), first)

            summary = record_episodes(num_episodes=2, dataset_dir=out, num_workers=2, **settings)
            self.assertEqual((summary["episodes_written"], summary["episodes_total"]), (1, 2))


class ConfigTest(unittest.TestCase):
    def test_overrides(self):
        config = recorder_settings(compose_config(["task=sim_insertion", "num_episodes=3", "image_size=[32,48]", "camera_names=[top]"]))
        self.assertEqual(config["task"], "sim_insertion")
        self.assertEqual(config["num_episodes"], 3)
        self.assertEqual(config["image_size"], [32, 48])
        self.assertEqual(config["camera_names"], ["top"])
        self.assertEqual((config["seed"], config["compression"], config["save_failed"]), (0, "gzip", False))
        self.assertFalse(GlobalHydra.instance().is_initialized())  # composing leaves no Hydra state behind

    def test_unknown_key_lists_valid_keys(self):
        with self.assertRaisesRegex(SystemExit, r"Unknown option\(s\) \['episodes'\]; valid keys: .*num_episodes"):
            compose_config(["episodes=3"])

    def test_image_size_must_be_height_and_width(self):
        with self.assertRaisesRegex(SystemExit, r"image_size must be \[height,width\], got \[32, 48, 3\]"):
            recorder_settings(compose_config(["image_size=[32,48,3]"]))

    def test_main_records_from_overrides(self):
        with tempfile.TemporaryDirectory() as tmp, redirect_stdout(io.StringIO()) as printed:
            summary = main(["task=sim_transfer", "num_episodes=1", f"dataset_dir={tmp}/state", "camera_names=[]", "seed=4"])
            self.assertEqual((summary["episodes_written"], summary["next_seed"]), (1, 5))
            with h5py.File(Path(tmp) / "state" / "episode_0.hdf5", "r") as f:
                self.assertEqual((f.attrs["seed"], list(f["observations/images"])), (4, []))
        self.assertIn("1 episodes written to", printed.getvalue())


class CommandLineTest(unittest.TestCase):
    """The Hydra command line: the existing `key=value` lines record, unknown keys are named before Hydra composes."""

    def test_records_into_a_relative_dir_and_writes_nothing_else(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_script(["task=sim_transfer", "num_episodes=1", "dataset_dir=demos", "camera_names=[]", "seed=0", "image_size=[96,96]"], Path(tmp))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("1 episodes written to demos", result.stdout)
            # No chdir (dataset_dir stays relative to the caller) and no outputs/, .hydra/ or log file.
            self.assertEqual(sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*")), ["demos", "demos/episode_0.hdf5"])

    def test_help_and_cfg_job_show_the_settings_without_recording(self):
        with tempfile.TemporaryDirectory() as tmp:
            help_text = run_script(["--help"], Path(tmp))
            composed = run_script(["--cfg", "job", "task=sim_insertion", "num_episodes=3"], Path(tmp))
            self.assertEqual(list(Path(tmp).iterdir()), [])
        self.assertEqual(help_text.returncode, 0, help_text.stderr)
        self.assertIn("== Settings ==", help_text.stdout)
        self.assertIn("num_episodes: 50", help_text.stdout)  # the default
        self.assertEqual(composed.returncode, 0, composed.stderr)
        self.assertIn("task: sim_insertion", composed.stdout)
        self.assertIn("num_episodes: 3", composed.stdout)

    def test_unknown_key_fails_naming_the_valid_keys(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_script(["task=sim_insertion", "episodes=3"], Path(tmp))
            self.assertEqual(list(Path(tmp).iterdir()), [])
        self.assertNotEqual(result.returncode, 0)
        # Named by the recorder, not Hydra's struct error (which would suggest `+episodes=3`).
        self.assertIn("Unknown option(s) ['episodes']; valid keys: task, num_episodes,", result.stderr)
        self.assertNotIn("+episodes", result.stderr)
