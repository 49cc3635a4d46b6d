"""The DataLoader: global batches sliced per data rank, resumable."""

from twinkle.dataloader.base import DataLoader

__all__ = ["DataLoader"]
