"""``DatasetMeta``: which data to load, and which rows of it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from twinkle.errors import ConfigError

_counter = itertools.count()


@dataclass
class DatasetMeta:
    """Where a dataset comes from.

    Args:
        dataset_id: a local file or folder, or a hub id (``ms://org/name``, ``hf://org/name``; no prefix: ModelScope).
        subset_name: the hub subset (config) name.
        split: the split to use (a dataset with several splits is reduced to this one, else ``train``).
        data_slice: the row indices to keep (any iterable, e.g. ``range(1000)``); indices wrap modulo the length,
            so ``range(3 * n)`` repeats the data three times.
        data: in-memory data instead of ``dataset_id``: a list of rows, a dict of columns, a generator, or a
            Hugging Face dataset.

    Raises:
        ConfigError (a ValueError): neither ``dataset_id`` nor ``data`` given.
    """

    dataset_id: str = ""
    subset_name: str = "default"
    split: str = "train"
    data_slice: Any = None
    data: Any = None

    def __post_init__(self) -> None:
        if not self.dataset_id and self.data is None:
            raise ConfigError("DatasetMeta needs a dataset_id (a path or hub id) or data (rows in memory)")
        if self.data is not None and not self.dataset_id:
            self._memory_id = f"memory_{next(_counter)}"

    def get_id(self) -> str:
        """A unique key: ``dataset_id`` with ``/`` and ``.`` replaced by ``_``, then ``:subset:split``."""
        base = self.dataset_id or self._memory_id
        return f"{base.replace('/', '_').replace('.', '_')}:{self.subset_name}:{self.split}"

    def slice_indices(self, length: int) -> list[int] | None:
        """The row indices ``data_slice`` selects from ``length`` rows (wrapping), or None for all rows."""
        if self.data_slice is None:
            return None
        if length == 0:
            raise ConfigError(f"data_slice given for {self.dataset_id or 'in-memory data'!r}, which has no rows")
        return [int(i) % length for i in self.data_slice]
