"""The index chain behind ``DataLoader``: order (seeded, optionally shuffled) -> global batches -> this rank's slice."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from twinkle.utils.device_mesh import DeviceMesh


def epoch_order(size: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The sample order of one epoch: ``arange`` or a permutation seeded by ``(seed, epoch)``."""
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng([seed, epoch]).permutation(size)


class DeviceMeshBatchSampler:
    """Yields, per global batch, the indices this data rank takes (``mesh.get_slice`` of the batch).

    Starts ``start`` samples into the epoch (for resuming), and stops at a global batch smaller than
    ``min_batch_size``.
    """

    def __init__(
        self, order: np.ndarray, batch_size: int, min_batch_size: int, mesh: DeviceMesh, rank: int, start: int = 0
    ) -> None:
        self.order = order
        self.batch_size = batch_size
        self.min_batch_size = min_batch_size
        self.mesh = mesh
        self.rank = rank
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        for begin in range(self.start, len(self.order), self.batch_size):
            batch = self.order[begin : begin + self.batch_size]
            if len(batch) < self.min_batch_size:
                return
            yield [int(i) for i in batch[self.mesh.get_slice(len(batch), rank=self.rank)]]

    def __len__(self) -> int:
        remaining = max(0, len(self.order) - self.start)
        full, rest = divmod(remaining, self.batch_size)
        return full + (1 if rest and rest >= self.min_batch_size else 0)
