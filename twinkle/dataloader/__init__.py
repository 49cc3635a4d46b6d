"""The DataLoader: global batches sliced per data rank, resumable; upstream's sampler classes; the preference
collator ``interleave_pairs``."""

from twinkle.dataloader.base import DataLoader
from twinkle.dataloader.collate import interleave_pairs
from twinkle.dataloader.samplers import DeviceMeshSampler, RetrySampler

__all__ = ["DataLoader", "DeviceMeshSampler", "RetrySampler", "interleave_pairs"]


def __getattr__(name: str):
    if name == "DeviceMeshIterableFetcher":
        from twinkle.errors import NotBuiltError

        raise NotBuiltError(
            "twinkle.dataloader.DeviceMeshIterableFetcher is not built in Twinkle Commons: DataLoader batches "
            "iterable datasets itself (pulls batch_size items, slices them by the mesh, skips empty items)"
        )
    raise AttributeError(f"module 'twinkle.dataloader' has no attribute {name!r}")
