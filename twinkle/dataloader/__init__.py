"""The DataLoader: global batches sliced per data rank, resumable; upstream's sampler classes; the preference
collator ``interleave_pairs``."""

from twinkle.dataloader.base import DataLoader
from twinkle.dataloader.collate import interleave_pairs
from twinkle.dataloader.samplers import DeviceMeshSampler, RetrySampler
from twinkle.errors import not_built_attributes

__all__ = ["DataLoader", "DeviceMeshSampler", "RetrySampler", "interleave_pairs"]


__getattr__ = not_built_attributes("twinkle.dataloader", {
    "DeviceMeshIterableFetcher": "twinkle.dataloader.DeviceMeshIterableFetcher is not built in Twinkle Commons: "
    "DataLoader batches iterable datasets itself (pulls batch_size items, slices them by the mesh, skips empty items)",
})
