"""Datasets: load from files, memory or a hub; preprocess, filter, encode; mix; lazy, streaming and packed forms."""

from twinkle.dataset.base import Dataset
from twinkle.dataset.iterable import IterableDataset
from twinkle.dataset.lazy import LazyDataset
from twinkle.dataset.meta import DatasetMeta
from twinkle.dataset.packing import IterablePackingDataset, PackingDataset, pack_lengths

__all__ = [
    "Dataset",
    "DatasetMeta",
    "IterableDataset",
    "IterablePackingDataset",
    "LazyDataset",
    "PackingDataset",
    "pack_lengths",
]
