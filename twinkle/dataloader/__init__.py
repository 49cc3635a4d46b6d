"""The DataLoader: global batches sliced per data rank, resumable; upstream's sampler classes."""

from twinkle.dataloader.base import DataLoader
from twinkle.dataloader.samplers import DeviceMeshSampler, RetrySampler

__all__ = ["DataLoader", "DeviceMeshSampler", "RetrySampler"]
