"""Datasets: load from files, memory or a hub; preprocess, filter, encode; mix; lazy, streaming and packed forms."""

from twinkle.dataset.base import Dataset
from twinkle.dataset.meta import DatasetMeta

__all__ = ["Dataset", "DatasetMeta"]
