"""Datasets: the container and on-disk format, the simulated world, importers and exporters."""

from bgmrec.data.dataset import Dataset, DatasetError, SplitInfo, load_dataset, save_dataset

__all__ = ["Dataset", "DatasetError", "SplitInfo", "load_dataset", "save_dataset"]
