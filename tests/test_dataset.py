import os
import pickle
import re
import shlex
import tempfile
import unittest

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from roboimi.vla.data import HDF5EpisodeDataset, build_datasets
from roboimi.vla.data.build import should_preload, split_episodes
from roboimi.vla.data.episode_files import find_episode_files, record_command, write_episode_file
from roboimi.vla.data.windowing import AnchorIndex, sample_window
from tests.synthetic_episodes import write_dataset, write_episode

torch.set_num_threads(1)
CAMERAS = ("r_vis", "top", "front")


def decode_frames(values, seed):
    """Frame numbers from the synthetic encoding qpos[t, 0] = 1000 * seed + t (action adds 0.5)."""
    return np.floor(values[:, 0].numpy() - 1000 * seed).astype(int).tolist()


class TestWindowing(unittest.TestCase):
    def check(self, window, obs_frames, obs_is_pad, action_frames, action_is_pad):
        self.assertEqual(window.obs_frames.tolist(), obs_frames)
        self.assertEqual(window.obs_is_pad.tolist(), obs_is_pad)
        self.assertEqual(window.action_frames.tolist(), action_frames)
        self.assertEqual(window.action_is_pad.tolist(), action_is_pad)

    def test_length5_obs2_pred4(self):
        # Window start = t - 1. t=0: frames -1..2, frame -1 clamps to 0.
        self.check(sample_window(0, 5, 2, 4), [0, 0], [True, False], [0, 0, 1, 2], [True, False, False, False])
        # t=1: frames 0..3, nothing outside.
        self.check(sample_window(1, 5, 2, 4), [0, 1], [False, False], [0, 1, 2, 3], [False] * 4)
        # t=4: frames 3..6, frames 5 and 6 clamp to 4.
        self.check(sample_window(4, 5, 2, 4), [3, 4], [False, False], [3, 4, 4, 4], [False, False, True, True])

    def test_obs_horizon_longer_than_elapsed_and_remaining_frames(self):
        # length 2, obs 3, pred 5, t=0: frames -2..2 -> 0,0,0,1,1.
        self.check(
            sample_window(0, 2, 3, 5),
            [0, 0, 0],
            [True, True, False],
            [0, 0, 0, 1, 1],
            [True, True, False, False, True],
        )

    def test_obs_horizon_one(self):
        self.check(sample_window(2, 3, 1, 3), [2], [False], [2, 2, 2], [False, True, True])

    def test_anchor_outside_episode_raises(self):
        with self.assertRaises(IndexError):
            sample_window(5, 5, 2, 4)

    def test_anchor_index_maps_flat_index_to_episode_and_frame(self):
        anchors = AnchorIndex([3, 2, 4])
        self.assertEqual(len(anchors), 9)
        expected = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (2, 3)]
        self.assertEqual([anchors.locate(i) for i in range(9)], expected)
        with self.assertRaises(IndexError):
            anchors.locate(9)


class TestSamples(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        write_dataset(cls.tmp.name, lengths=(5, 7), image_size=(16, 16))
        cls.bundle = build_datasets(cls.tmp.name, CAMERAS, obs_horizon=2, pred_horizon=4)

    @classmethod
    def tearDownClass(cls):
        cls.bundle.train.close()
        cls.tmp.cleanup()

    def test_every_frame_is_an_anchor(self):
        self.assertEqual(len(self.bundle.train), 5 + 7)

    def test_sample_shapes_and_dtypes(self):
        sample = self.bundle.train[3]
        self.assertEqual(list(sample["images"]), list(CAMERAS))
        for images in sample["images"].values():
            self.assertEqual(images.shape, (2, 3, 16, 16))
            self.assertEqual(images.dtype, torch.uint8)
        self.assertEqual((sample["qpos"].shape, sample["qpos"].dtype), ((2, 14), torch.float32))
        self.assertEqual((sample["action"].shape, sample["action"].dtype), ((4, 14), torch.float32))
        self.assertEqual((sample["action_is_pad"].shape, sample["action_is_pad"].dtype), ((4,), torch.bool))
        self.assertEqual((sample["obs_is_pad"].shape, sample["obs_is_pad"].dtype), ((2,), torch.bool))

    def test_last_frame_of_first_episode_reads_frames_3_and_4(self):
        sample = self.bundle.train[4]
        self.assertEqual(decode_frames(sample["qpos"], seed=0), [3, 4])
        self.assertEqual(decode_frames(sample["action"], seed=0), [3, 4, 4, 4])
        self.assertEqual(sample["action_is_pad"].tolist(), [False, False, True, True])
        self.assertEqual(sample["obs_is_pad"].tolist(), [False, False])
        np.testing.assert_allclose(sample["qpos"][1].numpy(), 4 + np.arange(14) / 100, atol=1e-5)
        np.testing.assert_allclose(sample["action"][0].numpy(), 3.5 + np.arange(14) / 100, atol=1e-5)
        for position, cam in enumerate(CAMERAS):
            images = sample["images"][cam]
            self.assertTrue(torch.all(images[0, 0] == 3) and torch.all(images[1, 0] == 4))
            self.assertTrue(torch.all(images[:, 1] == position))
            self.assertTrue(torch.all(images[:, 2] == 0))

    def test_first_frame_of_second_episode_reads_that_episode(self):
        sample = self.bundle.train[5]
        self.assertEqual(decode_frames(sample["qpos"], seed=1), [0, 0])
        self.assertEqual(decode_frames(sample["action"], seed=1), [0, 0, 1, 2])
        self.assertEqual(sample["obs_is_pad"].tolist(), [True, False])
        self.assertEqual(sample["action_is_pad"].tolist(), [True, False, False, False])
        self.assertTrue(torch.all(sample["images"]["top"][:, 0] == 0))
        self.assertTrue(torch.all(sample["images"]["top"][:, 2] == 1))

    def test_images_follow_requested_camera_order(self):
        dataset = HDF5EpisodeDataset(self.bundle.train.episodes, ("front", "r_vis"), 2, 4)
        sample = dataset[1]
        self.assertEqual(list(sample["images"]), ["front", "r_vis"])
        self.assertTrue(torch.all(sample["images"]["front"][:, 1] == 2))
        self.assertTrue(torch.all(sample["images"]["r_vis"][:, 1] == 0))
        dataset.close()

    def test_horizons_must_leave_the_current_step_in_the_action_chunk(self):
        with self.assertRaisesRegex(ValueError, r"obs_horizon=3, pred_horizon=2.*agent\.pred_horizon"):
            HDF5EpisodeDataset(self.bundle.train.episodes, CAMERAS, 3, 2)

    def test_default_collate_batches_samples(self):
        batch = next(iter(DataLoader(self.bundle.train, batch_size=3)))
        self.assertEqual(batch["images"]["front"].shape, (3, 2, 3, 16, 16))
        self.assertEqual(batch["qpos"].shape, (3, 2, 14))
        self.assertEqual(batch["action"].shape, (3, 4, 14))
        self.assertEqual(batch["action_is_pad"].shape, (3, 4))
        self.assertEqual(batch["obs_is_pad"].tolist(), [[True, False], [False, False], [False, False]])

    def test_two_workers_match_main_process(self):
        # Reading in this process first leaves open handles that the forked workers must not reuse.
        serial = list(DataLoader(self.bundle.train, batch_size=4, num_workers=0))
        parallel = list(DataLoader(self.bundle.train, batch_size=4, num_workers=2))
        self.assertEqual(len(serial), len(parallel))
        for a, b in zip(serial, parallel):
            for cam in CAMERAS:
                self.assertTrue(torch.equal(a["images"][cam], b["images"][cam]))
            for key in ("qpos", "action", "action_is_pad", "obs_is_pad"):
                self.assertTrue(torch.equal(a[key], b[key]))

    def test_pickled_dataset_reopens_files(self):
        dataset = self.bundle.train
        before = dataset[6]
        copy = pickle.loads(pickle.dumps(dataset))
        after = copy[6]
        self.assertTrue(torch.equal(before["images"]["top"], after["images"]["top"]))
        self.assertTrue(torch.equal(before["action"], after["action"]))
        copy.close()


class TestLoading(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_dims_come_from_files(self):
        write_dataset(self.dir, lengths=(6, 6), state_dim=16, action_dim=10, camera_names=("top",), with_qvel=False)
        bundle = build_datasets(self.dir, ["top"], obs_horizon=2, pred_horizon=4)
        self.assertEqual((bundle.state_dim, bundle.action_dim), (16, 10))
        self.assertEqual(bundle.train[0]["qpos"].shape, (2, 16))
        self.assertEqual(bundle.train[0]["action"].shape, (4, 10))

    def test_resize_keeps_uint8_and_frame_content(self):
        write_dataset(self.dir, lengths=(6,), image_size=(16, 24), camera_names=("top",))
        bundle = build_datasets(self.dir, ["top"], 2, 4, image_resize_shape=[8, 12])
        self.assertEqual(bundle.image_shape, (8, 12))
        images = bundle.train[3]["images"]["top"]
        self.assertEqual((images.shape, images.dtype), ((2, 3, 8, 12), torch.uint8))
        # Synthetic frames are constant per channel, which antialiased resizing must preserve.
        self.assertTrue(torch.all(images[0, 0] == 2) and torch.all(images[1, 0] == 3))

    def test_resize_allows_cameras_of_different_sizes(self):
        path = os.path.join(self.dir, "episode_0.hdf5")
        qpos = np.zeros((4, 2), dtype=np.float32)
        images = {"a": np.zeros((4, 8, 8, 3), np.uint8), "b": np.full((4, 16, 12, 3), 9, np.uint8)}
        write_episode_file(path, qpos, qpos, images)
        with self.assertRaisesRegex(ValueError, r"different image sizes.*data\.image_resize_shape"):
            build_datasets(self.dir, ["a", "b"], 2, 2)
        bundle = build_datasets(self.dir, ["a", "b"], 2, 2, image_resize_shape=(10, 10))
        sample = bundle.train[0]
        self.assertEqual(sample["images"]["a"].shape, (2, 3, 10, 10))
        self.assertTrue(torch.all(sample["images"]["b"] == 9))

    def test_episodes_sorted_numerically(self):
        for i in (10, 2, 1):
            write_episode(os.path.join(self.dir, f"episode_{i}.hdf5"), 3, camera_names=("top",), seed=i)
        open(os.path.join(self.dir, "notes.txt"), "w").close()
        names = [os.path.basename(p) for p in find_episode_files(self.dir)]
        self.assertEqual(names, ["episode_1.hdf5", "episode_2.hdf5", "episode_10.hdf5"])
        bundle = build_datasets(self.dir, ["top"], 1, 1)
        self.assertEqual([os.path.basename(p) for p in bundle.train_episodes], names)
        # Sample 3 is frame 0 of the second file, episode_2.
        self.assertEqual(decode_frames(bundle.train[3]["qpos"], seed=2), [0])


class TestSplit(unittest.TestCase):
    def test_split_is_deterministic_disjoint_and_sorted(self):
        train, val = split_episodes(10, 0.3, seed=7)
        self.assertEqual((train, val), split_episodes(10, 0.3, seed=7))
        self.assertEqual(len(val), 3)
        self.assertEqual(sorted(train + val), list(range(10)))
        self.assertEqual(train, sorted(train))
        self.assertEqual(val, sorted(val))

    def test_seed_changes_the_split(self):
        splits = {tuple(split_episodes(10, 0.3, seed)[1]) for seed in range(5)}
        self.assertGreater(len(splits), 1)

    def test_each_split_keeps_at_least_one_episode(self):
        self.assertEqual([len(ids) for ids in split_episodes(3, 0.01, 0)], [2, 1])
        self.assertEqual([len(ids) for ids in split_episodes(3, 0.99, 0)], [1, 2])
        self.assertEqual(split_episodes(3, 0.0, 0), ([0, 1, 2], []))

    def test_invalid_split_requests(self):
        with self.assertRaisesRegex(ValueError, r"at least 2 episodes.*train\.val_split=0"):
            split_episodes(1, 0.5, 0)
        with self.assertRaisesRegex(ValueError, r"\[0, 1\).*train\.val_split"):
            split_episodes(5, 1.0, 0)

    def test_bundle_split(self):
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_dataset(tmp, lengths=(3, 4, 5, 6), camera_names=("top",), image_size=(8, 8))
            bundle = build_datasets(tmp, ["top"], 2, 2, val_split=0.5, seed=3)
            train, val = split_episodes(4, 0.5, 3)
            self.assertEqual(bundle.train_episodes, [paths[i] for i in train])
            self.assertEqual(bundle.val_episodes, [paths[i] for i in val])
            self.assertEqual(len(bundle.val), sum((3, 4, 5, 6)[i] for i in val))
            no_val = build_datasets(tmp, ["top"], 2, 2, val_split=0.0)
            self.assertIsNone(no_val.val)
            self.assertEqual((no_val.train_episodes, no_val.val_episodes), (paths, []))


class TestErrors(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def episode(self, i, length=6, **kw):
        kw.setdefault("camera_names", ("top",))
        kw.setdefault("image_size", (8, 8))
        return write_episode(os.path.join(self.dir, f"episode_{i}.hdf5"), length, seed=i, **kw)

    def test_missing_dir_explains_how_to_record(self):
        missing = os.path.join(self.dir, "nope")
        with self.assertRaises(FileNotFoundError) as ctx:
            build_datasets(missing, ["top"], 2, 4)
        message = str(ctx.exception)
        self.assertIn(missing, message)
        self.assertIn(f"python roboimi/demos/record_sim_episodes.py task=sim_transfer dataset_dir={missing}", message)

    def test_dir_without_episodes(self):
        open(os.path.join(self.dir, "episode_a.hdf5"), "w").close()
        with self.assertRaisesRegex(FileNotFoundError, r"no episode_<i>\.hdf5 files.*record_sim_episodes\.py"):
            build_datasets(self.dir, ["top"], 2, 4)

    def test_unknown_camera_lists_available_ones(self):
        self.episode(0, camera_names=("top", "front"))
        with self.assertRaises(ValueError) as ctx:
            build_datasets(self.dir, ["top", "wrist"], 2, 4)
        message = str(ctx.exception)
        self.assertIn("['wrist']", message)
        self.assertIn("Available cameras: ['front', 'top']", message)
        self.assertIn("data.camera_names=[", message)

    def test_mismatched_state_dims_name_files_and_dims(self):
        self.episode(0, state_dim=14)
        self.episode(1, state_dim=16)
        with self.assertRaisesRegex(ValueError, r"state_dim \(14: \['episode_0\.hdf5'\]; 16: \['episode_1\.hdf5'\]\)"):
            build_datasets(self.dir, ["top"], 2, 4)

    def test_mismatched_action_dims_name_files_and_dims(self):
        self.episode(0, action_dim=14)
        self.episode(1, action_dim=14)
        self.episode(2, action_dim=7)
        with self.assertRaisesRegex(
            ValueError, r"action_dim \(14: \['episode_0\.hdf5', 'episode_1\.hdf5'\]; 7: \['episode_2\.hdf5'\]\)"
        ):
            build_datasets(self.dir, ["top"], 2, 4)

    def test_mismatched_image_shapes_name_files(self):
        self.episode(0, image_size=(8, 8))
        self.episode(1, image_size=(8, 12))
        with self.assertRaisesRegex(ValueError, r"'top'.*\(8, 12, 3\).*episode_1\.hdf5.*\(8, 8, 3\).*episode_0\.hdf5.*image_resize_shape"):
            build_datasets(self.dir, ["top"], 2, 4)
        bundle = build_datasets(self.dir, ["top"], 2, 4, image_resize_shape=(6, 6))
        self.assertEqual({tuple(bundle.train[i]["images"]["top"].shape) for i in range(len(bundle.train))}, {(2, 3, 6, 6)})

    def test_short_episode_is_skipped_with_warning(self):
        self.episode(0, length=6)
        short = self.episode(1, length=2)
        with self.assertWarnsRegex(UserWarning, r"episode_1\.hdf5: 2 frames, fewer than obs_horizon=3"):
            bundle = build_datasets(self.dir, ["top"], 3, 4)
        self.assertEqual(len(bundle.train), 6)
        self.assertEqual([path for path, _ in bundle.skipped], [short])

    def test_only_short_episodes_is_an_error(self):
        self.episode(0, length=2)
        with self.assertWarns(UserWarning), self.assertRaisesRegex(ValueError, "No usable episodes"):
            build_datasets(self.dir, ["top"], 3, 4)

    def test_corrupt_file_is_skipped_and_named(self):
        self.episode(0)
        corrupt = os.path.join(self.dir, "episode_1.hdf5")
        with open(corrupt, "wb") as f:
            f.write(b"not an hdf5 file" * 10)
        with self.assertWarnsRegex(UserWarning, r"episode_1\.hdf5: unreadable HDF5 file"):
            bundle = build_datasets(self.dir, ["top"], 2, 4)
        self.assertEqual(bundle.train_episodes, [os.path.join(self.dir, "episode_0.hdf5")])
        self.assertEqual(bundle.skipped[0][0], corrupt)

    def test_truncated_file_only_is_an_error(self):
        path = self.episode(0)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        with self.assertWarnsRegex(UserWarning, "episode_0.hdf5"), self.assertRaisesRegex(
            ValueError, "No usable episodes"
        ):
            build_datasets(self.dir, ["top"], 2, 4)

    def test_qpos_action_length_mismatch_names_file(self):
        path = os.path.join(self.dir, "episode_0.hdf5")
        images = {"top": np.zeros((5, 8, 8, 3), np.uint8)}
        write_episode_file(path, np.zeros((5, 3), np.float32), np.zeros((4, 3), np.float32), images)
        with self.assertRaisesRegex(ValueError, r"episode_0\.hdf5.*qpos has 5 frames but /action has 4"):
            build_datasets(self.dir, ["top"], 2, 4)

    def test_missing_action_dataset_names_file(self):
        path = self.episode(0)
        with h5py.File(path, "a") as f:
            del f["action"]
        with self.assertRaisesRegex(ValueError, r"episode_0\.hdf5.*no '/action' dataset"):
            build_datasets(self.dir, ["top"], 2, 4)


if __name__ == "__main__":
    unittest.main()


class TestPreloadedImages(unittest.TestCase):
    """Frames decoded once into memory give the same samples as frames read per sample."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(0)
        for index, length in enumerate((5, 9)):
            state = rng.normal(size=(length, 4)).astype(np.float32)
            images = {cam: rng.integers(0, 256, (length, 12, 16, 3), dtype=np.uint8) for cam in ("top", "front")}
            write_episode_file(os.path.join(self.tmp.name, f"episode_{index}.hdf5"), state, state, images)

    def tearDown(self):
        self.tmp.cleanup()

    def assert_same_samples(self, **kwargs):
        on_disk = build_datasets(self.tmp.name, ["front", "top"], 3, 4, preload_images=False, **kwargs)
        preloaded = build_datasets(self.tmp.name, ["front", "top"], 3, 4, preload_images=True, **kwargs)
        self.assertFalse(on_disk.train.images_preloaded)
        self.assertTrue(preloaded.train.images_preloaded)
        for index in range(len(on_disk.train)):
            expected, actual = on_disk.train[index], preloaded.train[index]
            for cam in ("front", "top"):
                self.assertEqual(actual["images"][cam].dtype, torch.uint8)
                self.assertTrue(torch.equal(actual["images"][cam], expected["images"][cam]), (index, cam))
            self.assertTrue(torch.equal(actual["qpos"], expected["qpos"]))
        on_disk.train.close()

    def test_preloaded_frames_equal_frames_read_per_sample(self):
        self.assert_same_samples()

    def test_preloaded_frames_are_resized_like_frames_read_per_sample(self):
        self.assert_same_samples(image_resize_shape=(6, 10))

    def test_decoded_bytes_count_every_frame_of_every_camera(self):
        bundle = build_datasets(self.tmp.name, ["front", "top"], 1, 1, preload_images=False)
        self.assertEqual(bundle.train.decoded_image_bytes, (5 + 9) * 2 * 12 * 16 * 3)

    def test_auto_preloads_what_fits_a_quarter_of_memory(self):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.assertTrue(should_preload("auto", 1000))
        self.assertTrue(should_preload("auto", memory // 4))
        self.assertFalse(should_preload("auto", memory // 4 + 1))
        self.assertFalse(should_preload("auto", 0))  # camera-less data has nothing to decode
        self.assertTrue(build_datasets(self.tmp.name, ["top"], 1, 1, preload_images="auto").train.images_preloaded)

    def test_invalid_setting_names_the_key(self):
        with self.assertRaisesRegex(ValueError, r"data\.preload_images must be true, false or auto, got 'yes'"):
            build_datasets(self.tmp.name, ["top"], 1, 1, preload_images="yes")


class RecordCommandTest(unittest.TestCase):
    def test_the_suggested_command_survives_the_shell_and_hydra_with_any_path(self):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        for path in ("data/sim_transfer", "/tmp/a b/$(touch pwned)/it's", "x;rm -rf ~", "back\\slash `cmd`", "end\\", "q\\'"):
            argv = shlex.split(record_command(path))
            self.assertEqual(argv[:3], ["python", "roboimi/demos/record_sim_episodes.py", "task=sim_transfer"])
            (override,) = OverridesParser.create().parse_overrides(argv[3:])
            self.assertEqual((override.key_or_group, override.value()), ("dataset_dir", path))


class CorruptImageChunkTest(unittest.TestCase):
    def test_a_corrupt_compressed_chunk_names_the_episode_file_and_dataset(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "episode_0.hdf5")
            rng = np.random.default_rng(0)
            state = np.zeros((6, 4), np.float32)
            write_episode_file(path, state, state, {"top": rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)})
            with h5py.File(path, "r") as f:
                offset = f["observations/images/top"].id.get_chunk_info(3).byte_offset
            with open(path, "r+b") as f:  # overwrite frame 3's compressed bytes
                f.seek(offset)
                f.write(b"\xff" * 64)
            bundle = build_datasets(tmp, ["top"], 2, 2, preload_images=False)
            loader = DataLoader(bundle.train, batch_size=1, num_workers=1)
            with self.assertRaisesRegex(OSError, rf"Episode file '{re.escape(path)}': frames 2-3 of observations/images/top"):
                for _ in loader:
                    pass
