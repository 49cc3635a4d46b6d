"""Bin-pack encoded samples into rows of at most ``max_length`` tokens (map-style and streaming)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import datasets as hf
import numpy as np

from twinkle.dataset.base import Dataset
from twinkle.dataset.iterable import IterableDataset
from twinkle.dataset.meta import DatasetMeta
from twinkle.errors import DataError
from twinkle.infra import remote_class, remote_function

PACKED_KEYS = ("input_ids", "labels", "position_ids")


def pack_lengths(lengths: Iterable[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: group sample indices into bins whose total length is at most ``capacity``.

    A sample longer than ``capacity`` gets a bin of its own.
    """
    lengths = np.asarray(list(lengths), dtype=np.int64)
    remaining: np.ndarray = np.empty(0, dtype=np.int64)
    bins: list[list[int]] = []
    for index in np.argsort(-lengths, kind="stable"):
        size = int(lengths[index])
        fits = np.flatnonzero(remaining >= size)
        if len(fits):
            slot = int(fits[0])
            remaining[slot] -= size
            bins[slot].append(int(index))
        else:
            remaining = np.append(remaining, max(0, capacity - size))
            bins.append([int(index)])
    return [sorted(b) for b in bins]


def pack_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One packed row: ``input_ids``/``labels``/``position_ids`` concatenated (positions restart per sample).

    No ``attention_mask``: feed packed rows to ``InputProcessor(padding_free=True)``, which finds the sample
    boundaries from ``position_ids``.
    """
    packed: dict[str, Any] = {k: np.concatenate([np.asarray(r[k], dtype=np.int64) for r in rows]) for k in PACKED_KEYS}
    packed["length"] = len(packed["input_ids"])
    return packed


def _max_length(template: Any) -> int:
    if template is None or not getattr(template, "max_length", None):
        raise DataError("packing needs the template's max_length; call set_template(..., max_length=N) first")
    return int(template.max_length)


@remote_class(execute="first")
class PackingDataset(Dataset):
    """A ``Dataset`` whose encoded samples are bin-packed into rows of up to ``max_length`` tokens.

    >>> ds = PackingDataset(DatasetMeta('data.jsonl'))
    >>> ds.set_template('Template', model_id=..., max_length=2048); ds.map(...); ds.encode(); ds.pack_dataset()

    Args:
        packing_num_proc: kept for upstream compatibility; packing runs in this process.
    """

    def __init__(self, dataset_meta: DatasetMeta | None = None, packing_num_proc: int = 1, **load_kw: Any) -> None:
        super().__init__(dataset_meta, **load_kw)
        self.packing_num_proc = packing_num_proc

    @remote_function(execute="first")
    def pack_dataset(self) -> None:
        """Replace the encoded rows by packed rows (call after ``encode``)."""
        self._require_data()
        if "input_ids" not in self.dataset.column_names:
            raise DataError("pack_dataset needs encoded rows; call encode() first")
        capacity = _max_length(self.template)
        columns = {k: self.dataset[k] for k in (*PACKED_KEYS, "length")}
        rows = [{k: columns[k][i] for k in PACKED_KEYS} for i in range(len(columns["length"]))]
        packed = [pack_rows([rows[i] for i in b]) for b in pack_lengths(columns["length"], capacity)]
        self.dataset = hf.Dataset.from_list(packed)
        self.datasets = {"packed": self.dataset}
        self._mixed = True


@remote_class(execute="first")
class IterablePackingDataset(IterableDataset):
    """A streaming dataset that packs every ``packing_interval`` encoded samples into rows of up to ``max_length``.

    Args:
        packing_interval: samples buffered per packing round.
        cyclic: start the stream again when it ends (an endless iterator).
    """

    def __init__(
        self, dataset_meta: DatasetMeta | None = None, packing_interval: int = 128, cyclic: bool = False, **load_kw
    ) -> None:
        super().__init__(dataset_meta, **load_kw)
        if packing_interval < 1:
            raise DataError(f"packing_interval must be >= 1, got {packing_interval}")
        self.packing_interval = packing_interval
        self.cyclic = cyclic

    def _pack_buffer(self, buffer: list[dict[str, Any]], capacity: int) -> Iterator[dict[str, Any]]:
        for b in pack_lengths([r["length"] for r in buffer], capacity):
            yield pack_rows([buffer[i] for i in b])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._require_data()
        capacity = _max_length(self.template)
        while True:
            buffer: list[dict[str, Any]] = []
            produced = False
            for row in self.dataset:
                if "input_ids" not in row:
                    raise DataError("IterablePackingDataset needs encoded rows; call encode() first")
                buffer.append(row)
                if len(buffer) == self.packing_interval:
                    yield from self._pack_buffer(buffer, capacity)
                    produced, buffer = True, []
            if buffer:
                yield from self._pack_buffer(buffer, capacity)
                produced = True
            if not self.cyclic or not produced:
                return
