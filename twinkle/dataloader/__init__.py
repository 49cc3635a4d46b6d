"""The DataLoader: global batches sliced per data rank, resumable; upstream's sampler classes; the preference
collator ``interleave_pairs``."""

from twinkle.dataloader.base import DataLoader
from twinkle.dataloader.collate import interleave_pairs
from twinkle.dataloader.samplers import DeviceMeshSampler, RetrySampler

__all__ = ["DataLoader", "DeviceMeshSampler", "RetrySampler", "interleave_pairs"]
