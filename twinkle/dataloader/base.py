"""``DataLoader``: global batches, sliced per data rank, with bounded retries of failing samples."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from twinkle.dataloader.samplers import DeviceMeshBatchSampler, epoch_order
from twinkle.errors import BatchSizeError, ConfigError, DataError, NoLengthError
from twinkle.infra import _state, remote_class, remote_function
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.dataloader")


def _default_mesh() -> DeviceMesh:
    """Plain python: one rank. Under torchrun: a dp mesh over the world, this process at its rank."""
    world, rank = 1, 0
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
    except Exception:  # noqa: BLE001
        pass
    if world == 1:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    return DeviceMesh.from_sizes(dp_size=world, device_type="cpu").with_rank(rank)


class _RetryingFetcher:
    """``dataset[i]``, replacing a sample that raises or is empty by another one from a seeded stream of indices."""

    def __init__(self, dataset: Any, size: int, max_retries: int, seed: int) -> None:
        self.dataset = dataset
        self.size = size
        self.max_retries = max_retries
        self.seed = seed

    def many(self, indices: list[int]) -> list[Any]:
        """``[self(i) for i in indices]`` with one read of the whole batch where the dataset can (``__getitems__``:
        one Arrow take instead of one per row; one round trip for a remote dataset). Rows that come back empty, or
        a batch read that fails, go through the per-row retries."""
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is None or len(indices) < 2:
            return [self(i) for i in indices]
        try:
            rows = getitems(list(indices))
        except Exception:  # noqa: BLE001 - the per-row path says which sample failed, and replaces it
            rows = None
        if rows is None or len(rows) != len(indices):
            return [self(i) for i in indices]
        return [row if row else self(i) for i, row in zip(indices, rows, strict=True)]

    def __call__(self, index: int) -> Any:
        rng = None  # made on the first failure only: most samples never need a replacement
        current, last_error = index, None
        for attempt in range(self.max_retries + 1):
            try:
                item = self.dataset[current]
                if item:
                    return item
                last_error = "it is empty"
            except Exception as exc:  # noqa: BLE001 - any failing sample is skipped, up to max_retries
                last_error = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_retries:
                logger.warning("skipping sample %d (%s); trying another one", current, last_error)
                if rng is None:
                    rng = np.random.default_rng([self.seed, index])
                current = int(rng.integers(self.size))
        raise DataError(
            f"sample {index} and {self.max_retries} replacement(s) all failed; the last one: {last_error}. "
            f"Check the dataset (dataset.check()) or raise max_retries"
        )


@remote_class(execute="first")
class DataLoader:
    """Iterate a dataset in global batches; each data rank gets its slice.

    ``batch_size`` is the GLOBAL batch: with a mesh of data world size ``n``, each rank receives
    ``batch_size // n`` rows per step (``mesh.get_slice``). A batch is a list of encoded rows unless
    ``set_processor`` was called, in which case it is the processor's output (tensors).

    Args:
        dataset: a twinkle or torch map-style dataset (or a callable returning one), or an iterable dataset.
        batch_size: the global batch size; a multiple of the data world size.
        min_batch_size: a final global batch smaller than this is dropped (default: the data world size).
        device_mesh: the consumer's layout; default the global mesh, else a dp mesh over torchrun's world.
        max_retries: replacement samples tried for one failing or empty sample before giving up.
        shuffle: shuffle each epoch (seeded with ``seed`` and the epoch number).
        seed: the shuffle and retry seed; default the seed given to ``twinkle.initialize``.
        **torch_kw: passed to ``torch.utils.data.DataLoader`` (e.g. ``num_workers``).

    Raises:
        BatchSizeError: ``batch_size`` smaller than, or not a multiple of, the data world size.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        min_batch_size: int | None = None,
        device_mesh: DeviceMesh | None = None,
        max_retries: int = 20,
        shuffle: bool = False,
        seed: int | None = None,
        **torch_kw: Any,
    ) -> None:
        if callable(dataset) and not hasattr(dataset, "__getitem__") and not hasattr(dataset, "__iter__"):
            dataset = dataset()
        self.dataset = dataset
        self.device_mesh = device_mesh or _default_mesh()
        world = self.device_mesh.data_world_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BatchSizeError(f"batch_size must be a positive int, got {batch_size!r}")
        if batch_size < world or batch_size % world:
            lower, upper = max(world, batch_size // world * world), (batch_size // world + 1) * world
            raise BatchSizeError(
                f"batch_size={batch_size} is the global batch and must be a multiple of the data world size {world} "
                f"(dp * fsdp of the mesh) so every rank gets the same share; use {lower} or {upper}"
            )
        self.batch_size = batch_size
        self.min_batch_size = min(batch_size, min_batch_size if min_batch_size is not None else world)
        if self.min_batch_size < 1:
            raise BatchSizeError(f"min_batch_size must be >= 1, got {min_batch_size}")
        self.max_retries = max_retries
        self.shuffle = shuffle
        self.seed = _state.get_seed() if seed is None else seed
        self.torch_kw = torch_kw
        self.processor: Any = None
        self._consumed = 0
        self._iterable = self._is_stream(dataset)

    @staticmethod
    def _is_stream(dataset: Any) -> bool:
        import torch.utils.data

        return (
            bool(getattr(dataset, "streaming", False))
            or isinstance(dataset, torch.utils.data.IterableDataset)
            or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"))
        )

    # ------------------------------------------------------------------ configuration

    @remote_function(execute="first")
    def set_processor(self, processor: Any, **kwargs: Any) -> None:
        """Collate batches with an ``InputProcessor`` (instance, class or name); batches become tensors."""
        import sys

        import twinkle.processor as processors
        from twinkle.utils.construct import construct_class

        if not isinstance(processor, processors.InputProcessor):
            kwargs.setdefault("device_mesh", self.device_mesh)
        module = sys.modules[processors.__name__]
        self.processor = construct_class(processor, processors.InputProcessor, module, kind="processor", **kwargs)

    @property
    def data_rank(self) -> int:
        rank = self.device_mesh.data_rank
        if rank is None:
            raise ConfigError(
                f"rank {self.device_mesh.rank} is not in the DataLoader's mesh of {self.device_mesh.world_size} ranks"
            )
        return rank

    # ------------------------------------------------------------------ resume

    @remote_function(execute="first")
    def skip_consumed_samples(self, consumed_train_samples: int) -> None:
        """Resume: the next iteration starts after ``consumed_train_samples`` global samples."""
        if consumed_train_samples < 0:
            raise ConfigError(f"consumed_train_samples must be >= 0, got {consumed_train_samples}")
        self._consumed = int(consumed_train_samples)

    @remote_function(execute="first")
    def resume_from_checkpoint(self, consumed_train_samples: int) -> None:
        """Upstream's name for ``skip_consumed_samples``: pass what ``model.resume_from_checkpoint`` returned
        (``['consumed_train_samples']``). Only warns for a stream or ``n <= 0``."""
        if self._iterable or consumed_train_samples <= 0:
            logger.warning(
                "resume_from_checkpoint(%s): nothing to skip%s", consumed_train_samples,
                " (a stream is not skipped)" if self._iterable else "",
            )
            if self._iterable or consumed_train_samples < 0:
                return
        self._consumed = int(consumed_train_samples)

    @remote_function(execute="first")
    def get_state(self) -> dict[str, int]:
        """``{'consumed_train_samples': n}``: global samples handed out so far, for ``skip_consumed_samples``."""
        return {"consumed_train_samples": self._consumed}

    # ------------------------------------------------------------------ iteration

    def __len__(self) -> int:
        """The number of global batches in one epoch."""
        if self._iterable:
            raise NoLengthError("a DataLoader over an iterable dataset has no length; iterate it instead")
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (1 if rest and rest >= self.min_batch_size else 0)

    def __iter__(self) -> Iterator[Any]:
        if self._iterable:
            yield from self._iter_stream()
            return
        size = len(self.dataset)
        if size == 0:
            return
        epoch, start = divmod(self._consumed, size)
        order = epoch_order(size, epoch, self.seed, self.shuffle)
        sampler = DeviceMeshBatchSampler(
            order, self.batch_size, self.min_batch_size, self.device_mesh, self.data_rank, start
        )
        fetch = _RetryingFetcher(self.dataset, size, self.max_retries, self.seed + epoch)
        for indices, rows in zip(self._batch_starts(start, size), self._load(sampler, fetch), strict=False):
            self._consumed = epoch * size + indices
            yield self._finish(rows)
        self._consumed = (epoch + 1) * size  # a dropped short tail still ends the epoch

    def _batch_starts(self, start: int, size: int) -> Iterator[int]:
        for begin in range(start, size, self.batch_size):
            yield min(size, begin + self.batch_size)

    def _load(self, sampler: DeviceMeshBatchSampler, fetch: _RetryingFetcher) -> Iterator[list[Any]]:
        if not self.torch_kw.get("num_workers"):
            for indices in sampler:
                yield fetch.many(indices)
            return
        import torch.utils.data

        class _Fetching(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return fetch.size

            def __getitem__(self, index: int) -> Any:
                return fetch(index)

        loader = torch.utils.data.DataLoader(
            _Fetching(), batch_sampler=list(sampler), collate_fn=lambda rows: rows, **self.torch_kw
        )
        yield from loader

    def _iter_stream(self) -> Iterator[Any]:
        skip = self._consumed
        batch: list[Any] = []
        seen = 0
        for row in self.dataset:
            seen += 1
            if seen <= skip:
                continue
            if not row:
                logger.warning("skipping an empty sample from the stream")
                continue
            batch.append(row)
            if len(batch) == self.batch_size:
                self._consumed = seen
                yield self._finish(batch[self.device_mesh.get_slice(len(batch), rank=self.data_rank)])
                batch = []
        if batch and len(batch) >= self.min_batch_size:
            self._consumed = seen
            yield self._finish(batch[self.device_mesh.get_slice(len(batch), rank=self.data_rank)])

    def _finish(self, rows: list[Any]) -> Any:
        return self.processor(rows) if self.processor is not None else rows

    def __repr__(self) -> str:
        return (
            f"DataLoader(batch_size={self.batch_size}, data_world_size={self.device_mesh.data_world_size}, "
            f"consumed={self._consumed})"
        )

