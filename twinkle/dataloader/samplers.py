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


# ---------------------------------------------------------------------- upstream's sampler classes
# The DataLoader above runs its own index chain (DeviceMeshBatchSampler + per-row retries). These are upstream's
# public sampler classes with upstream's behaviour, for scripts that build a torch DataLoader from them.


def _default_seed() -> int:
    import os

    if os.environ.get("TWINKLE_SEED"):
        return int(os.environ["TWINKLE_SEED"])
    try:
        from twinkle.infra import _state

        return int(_state.get_seed())
    except Exception:  # noqa: BLE001 - no initialize() yet
        return 42


class RetrySampler:
    """Yield indices of ``original_sampler`` whose items are usable, retrying the **same** index on failure.

    An item that is falsy or raises is fetched again, up to ``max_retries`` times; then RuntimeError (never a
    substitute index). The first ``skip_samples`` valid items are skipped. If fewer than ``len(dataset) -
    skip_samples`` indices came out, the stream is topped up from ``RandomState(seed).permutation(len)``.

    Args:
        original_sampler: any iterable of indices (e.g. ``torch.utils.data.SequentialSampler``).
        dataset: the map-style dataset the indices address.
        max_retries: fetch attempts per index beyond the first.
        skip_samples: valid items to skip (resume).
        seed: the top-up permutation's seed; default ``TWINKLE_SEED``, else ``initialize``'s seed, else 42.
    """

    def __init__(
        self, original_sampler, dataset, max_retries: int = 20, skip_samples: int = 0, seed: int | None = None
    ):
        self.original_sampler = original_sampler
        self.dataset = dataset
        self.max_retries = max_retries
        self.skip_samples = skip_samples
        self.seed = _default_seed() if seed is None else seed

    def _usable(self, index: int) -> bool:
        last = None
        for _ in range(self.max_retries + 1):
            try:
                if self.dataset[index]:
                    return True
                last = "it is empty"
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                last = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(
            f"sample {index} failed {self.max_retries + 1} times (last: {last}); fix the data or filter it out"
        )

    def __iter__(self) -> Iterator[int]:
        total = len(self.dataset)
        emitted = valid = 0
        for index in self.original_sampler:
            index = int(index)
            self._usable(index)
            valid += 1
            if valid <= self.skip_samples:
                continue
            emitted += 1
            yield index
        target = total - self.skip_samples
        if emitted < target:
            for index in np.random.RandomState(self.seed).permutation(total)[: target - emitted]:
                yield int(index)

    def __len__(self) -> int:
        return max(0, len(self.dataset) - self.skip_samples)


class DeviceMeshSampler:
    """Slice each batch of ``original_sampler`` (a batch sampler) for this data rank: ``batch[mesh.get_slice(n)]``.

    Skips the first ``skip_samples`` indices and stops at the first batch shorter than ``min_batch_size``
    (default: the mesh's data world size).
    """

    def __init__(
        self, original_sampler, device_mesh: DeviceMesh, min_batch_size: int | None = None, skip_samples: int = 0
    ):
        self.original_sampler = original_sampler
        self.device_mesh = device_mesh
        self.min_batch_size = device_mesh.data_world_size if min_batch_size is None else min_batch_size
        self.skip_samples = skip_samples

    def __iter__(self) -> Iterator[list[int]]:
        to_skip = self.skip_samples
        for batch in self.original_sampler:
            batch = list(batch)
            if to_skip:
                dropped = min(to_skip, len(batch))
                batch, to_skip = batch[dropped:], to_skip - dropped
                if not batch:
                    continue
            if len(batch) < self.min_batch_size:
                return
            yield batch[self.device_mesh.get_slice(len(batch))]

    def __len__(self) -> int:
        return len(self.original_sampler)
