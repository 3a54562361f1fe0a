"""HDF5 episode datasets in the ACT layout, sample windowing and min-max normalization."""

from roboimi.vla.data.build import DatasetBundle, build_datasets
from roboimi.vla.data.hdf5_episode_dataset import HDF5EpisodeDataset
from roboimi.vla.data.normalization import normalize_minmax, unnormalize_minmax

__all__ = ["DatasetBundle", "HDF5EpisodeDataset", "build_datasets", "normalize_minmax", "unnormalize_minmax"]
