import glob
import json
import os
import tempfile
import unittest

import h5py
import numpy as np
import torch

from roboimi.vla.data import build_datasets, normalize_minmax, unnormalize_minmax
from roboimi.vla.data.normalization import compute_stats, load_or_compute_stats, stats_cache_key
from tests.synthetic_episodes import write_dataset, write_episode

CAMERAS = ["top"]


class TestMinMax(unittest.TestCase):
    def test_hand_computed_values_numpy_and_torch(self):
        x = np.array([[0.0, -2.0], [5.0, 0.0], [10.0, 2.0]], dtype=np.float32)
        low, high = np.array([0.0, -2.0], np.float32), np.array([10.0, 2.0], np.float32)
        expected = np.array([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]])
        np.testing.assert_allclose(normalize_minmax(x, low, high), expected, atol=1e-6)
        y = normalize_minmax(torch.from_numpy(x), torch.from_numpy(low), torch.from_numpy(high))
        np.testing.assert_allclose(y.numpy(), expected, atol=1e-6)

    def test_formula_includes_eps(self):
        # y = 2 (x - min) / (max - min + eps) - 1 with a large eps makes the guard visible.
        y = normalize_minmax(np.array([1.0]), np.array([0.0]), np.array([1.0]), eps=1.0)
        np.testing.assert_allclose(y, [0.0])
        x = unnormalize_minmax(np.array([0.0]), np.array([0.0]), np.array([1.0]), eps=1.0)
        np.testing.assert_allclose(x, [1.0])

    def test_round_trip(self):
        rng = np.random.default_rng(0)
        low = rng.uniform(-3, 0, size=5).astype(np.float32)
        high = low + rng.uniform(0.1, 4, size=5).astype(np.float32)
        x = rng.uniform(low, high, size=(7, 5)).astype(np.float32)
        np.testing.assert_allclose(unnormalize_minmax(normalize_minmax(x, low, high), low, high), x, atol=1e-5)
        xt = torch.from_numpy(x)
        back = unnormalize_minmax(normalize_minmax(xt, low, high), low, high)
        self.assertEqual(back.dtype, torch.float32)
        np.testing.assert_allclose(back.numpy(), x, atol=1e-5)

    def test_constant_dimension_maps_to_minus_one_and_back(self):
        low = torch.tensor([0.0, 3.0])
        high = torch.tensor([2.0, 3.0])
        x = torch.tensor([[1.0, 3.0], [2.0, 3.0]])
        y = normalize_minmax(x, low, high)
        self.assertTrue(torch.all(torch.isfinite(y)))
        self.assertTrue(torch.equal(y[:, 1], torch.tensor([-1.0, -1.0])))
        np.testing.assert_allclose(unnormalize_minmax(y, low, high).numpy(), x.numpy(), atol=1e-6)

    def test_tensor_input_with_numpy_stats_keeps_tensor_dtype(self):
        y = normalize_minmax(torch.tensor([1.0], dtype=torch.float64), np.array([0.0], np.float32), np.array([2.0]))
        self.assertIsInstance(y, torch.Tensor)
        self.assertEqual(y.dtype, torch.float64)
        np.testing.assert_allclose(y.numpy(), [0.0], atol=1e-7)


class TestComputeStats(unittest.TestCase):
    def test_hand_computed_stats_over_all_frames(self):
        qpos = [np.array([[1.0, 2.0], [3.0, 2.0]]), np.array([[5.0, 2.0]])]
        action = [np.array([[0.0], [4.0]]), np.array([[-4.0]])]
        stats = compute_stats(qpos, action)
        np.testing.assert_allclose(stats["qpos_min"], [1.0, 2.0])
        np.testing.assert_allclose(stats["qpos_max"], [5.0, 2.0])
        np.testing.assert_allclose(stats["qpos_mean"], [3.0, 2.0])
        np.testing.assert_allclose(stats["qpos_std"], [np.sqrt(8 / 3), 0.0], rtol=1e-6)
        np.testing.assert_allclose(stats["action_min"], [-4.0])
        np.testing.assert_allclose(stats["action_max"], [4.0])
        np.testing.assert_allclose(stats["action_std"], [np.sqrt(32 / 3)], rtol=1e-6)
        self.assertTrue(all(value.dtype == np.float32 for value in stats.values()))


class TestDatasetStats(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.paths = write_dataset(self.dir, lengths=(5, 6, 7, 8), camera_names=CAMERAS, image_size=(8, 8))

    def tearDown(self):
        self.tmp.cleanup()

    def build(self, val_split=0.0, seed=0):
        return build_datasets(self.dir, CAMERAS, 2, 4, val_split=val_split, seed=seed)

    def cache_files(self):
        return sorted(glob.glob(os.path.join(self.dir, ".roboimi_stats_*.json")))

    def test_stats_cover_training_episodes_only(self):
        bundle = self.build(val_split=0.5, seed=4)
        # Seed 4 holds out episodes 0 and 3, which carry the dataset-wide extremes.
        self.assertEqual(bundle.val_episodes, [self.paths[0], self.paths[3]])
        # Synthetic qpos[t, j] = 1000 * i + t + j / 100 for episode i; training: episode 1 (6 frames), 2 (7 frames).
        offsets = np.arange(14) / 100
        np.testing.assert_allclose(bundle.stats["qpos_min"], 1000 + offsets, atol=1e-3)
        np.testing.assert_allclose(bundle.stats["qpos_max"], 2006 + offsets, atol=1e-3)
        np.testing.assert_allclose(bundle.stats["action_min"], 1000.5 + offsets, atol=1e-3)
        np.testing.assert_allclose(bundle.stats["action_max"], 2006.5 + offsets, atol=1e-3)
        frames = np.concatenate([1000 + np.arange(6), 2000 + np.arange(7)])
        np.testing.assert_allclose(bundle.stats["qpos_mean"][0], frames.mean(), rtol=1e-6)
        np.testing.assert_allclose(bundle.stats["qpos_std"][0], frames.std(), rtol=1e-5)
        expected_keys = {f"{name}_{stat}" for name in ("qpos", "action") for stat in ("min", "max", "mean", "std")}
        self.assertEqual(set(bundle.stats), expected_keys)

    def test_cache_is_written_and_read_back(self):
        first = self.build()
        [cache] = self.cache_files()
        self.assertEqual(os.path.basename(cache), f".roboimi_stats_{stats_cache_key(self.paths)}.json")
        # Marking the cached values proves the second build reads the file instead of recomputing.
        with open(cache) as f:
            content = json.load(f)
        content["stats"]["qpos_min"] = [-123.0] * 14
        with open(cache, "w") as f:
            json.dump(content, f)
        second = self.build()
        np.testing.assert_array_equal(second.stats["qpos_min"], np.full(14, -123.0, np.float32))
        np.testing.assert_array_equal(second.stats["qpos_max"], first.stats["qpos_max"])
        self.assertEqual(second.stats["qpos_min"].dtype, np.float32)

    def test_changed_file_invalidates_cache(self):
        self.build()
        [old_cache] = self.cache_files()
        write_episode(self.paths[3], 20, camera_names=CAMERAS, image_size=(8, 8), seed=3)
        bundle = self.build()
        np.testing.assert_allclose(bundle.stats["qpos_max"][0], 3000 + 19, atol=1e-3)
        new_cache = os.path.join(self.dir, f".roboimi_stats_{stats_cache_key(self.paths)}.json")
        self.assertNotEqual(new_cache, old_cache)
        self.assertEqual(self.cache_files(), sorted([old_cache, new_cache]))

    def test_different_training_list_gets_its_own_cache(self):
        full = self.build(val_split=0.0)
        split = self.build(val_split=0.5, seed=1)
        self.assertEqual(len(self.cache_files()), 2)
        self.assertNotEqual(stats_cache_key(full.train_episodes), stats_cache_key(split.train_episodes))

    def test_corrupt_cache_is_recomputed(self):
        reference = self.build().stats
        [cache] = self.cache_files()
        with open(cache, "w") as f:
            f.write("{truncated")
        with self.assertWarnsRegex(UserWarning, "unreadable stats cache"):
            stats = self.build().stats
        np.testing.assert_array_equal(stats["action_max"], reference["action_max"])
        with open(cache) as f:
            self.assertIn("stats", json.load(f))

    def test_nan_in_an_episode_names_file_key_and_frame_and_writes_no_cache(self):
        with h5py.File(self.paths[2], "r+") as f:
            f["action"][4, 3] = np.nan
            f["observations/qpos"][6, 0] = np.inf
        with self.assertRaisesRegex(ValueError, r"episode_2\.hdf5': /action holds NaN or inf, first at frame 4 \(1 frame"):
            self.build()
        self.assertEqual(self.cache_files(), [])

    def test_non_finite_cache_is_ignored_and_non_finite_stats_are_never_written(self):
        reference = self.build().stats
        [cache] = self.cache_files()
        with open(cache) as f:
            content = json.load(f)
        content["stats"]["qpos_min"][0] = float("nan")
        with open(cache, "w") as f:
            json.dump(content, f)
        with self.assertWarnsRegex(UserWarning, "holds NaN or inf"):
            stats = self.build().stats
        np.testing.assert_array_equal(stats["qpos_min"], reference["qpos_min"])
        bad = compute_stats([np.full((2, 3), np.nan)], [np.zeros((2, 1))])
        with tempfile.TemporaryDirectory() as empty:
            with self.assertRaisesRegex(ValueError, "not finite"):
                load_or_compute_stats(empty, self.paths, lambda: bad)
            self.assertEqual(os.listdir(empty), [])

    def test_unwritable_directory_computes_without_cache(self):
        # /proc refuses new files even for root, unlike a chmod-ed directory.
        stats = compute_stats([np.ones((2, 3))], [np.zeros((2, 1))])
        with self.assertWarnsRegex(UserWarning, r"Could not cache normalization stats in '/proc'.*writable"):
            result = load_or_compute_stats("/proc", self.paths, lambda: stats)
        np.testing.assert_array_equal(result["qpos_max"], np.ones(3, np.float32))


if __name__ == "__main__":
    unittest.main()
