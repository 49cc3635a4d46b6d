"""``LazyDataset``: map and encode run when a row is fetched (for costly per-row work such as images)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from twinkle.dataset.base import Dataset, as_function
from twinkle.dataset.meta import DatasetMeta
from twinkle.errors import DataError
from twinkle.infra import remote_class, remote_function
from twinkle.preprocessor import DataFilter, Preprocessor


def _call_on_row(fn: Callable, row: dict[str, Any], replace: bool) -> dict[str, Any] | None:
    preprocess = getattr(fn, "preprocess", None)
    if preprocess is not None:
        # upstream prefers a preprocessor's per-row method: no column round trip per fetched row
        try:
            result = preprocess(dict(row))
        except NotImplementedError:
            result = NotImplemented
        if result is not NotImplemented:
            if isinstance(result, list):
                result = result[0] if result else None
            if not result:
                return None
            return result if replace else {**row, **result}
    out = fn({k: [v] for k, v in row.items()})
    if not out:
        return None
    first = {k: v[0] for k, v in out.items() if v}
    if not first:
        return None
    return first if replace else {**row, **first}


@remote_class(execute="first")
class LazyDataset(Dataset):
    """A ``Dataset`` that defers ``map`` and ``encode`` to item fetch; ``filter`` runs at once.

    ``mix_dataset(interleave=True)`` is round-robin with wrap-around: row ``i`` comes from source ``i % n``, and the
    length is ``n * (longest source)``; ``interleave=False`` concatenates. A row that a preprocessor drops comes
    back as ``None`` (the DataLoader replaces it with another sample).

    Upstream's state attributes: ``do_encode`` and ``do_check`` (bools), ``encode_kwargs`` and
    ``add_generation_prompt``, set by ``encode()`` / ``check()``.
    """

    do_encode: bool = False
    do_check: bool = False

    def __init__(self, dataset_meta: DatasetMeta | None = None, **load_kw: Any) -> None:
        self._ops: dict[str, list[tuple[Callable, bool]]] = {}
        self._global_ops: list[tuple[Callable, bool]] = []
        self._encode: dict[str, Any] | None = None
        self._mix: tuple[str, list[str], list[int]] | None = None
        super().__init__(dataset_meta, **load_kw)

    # ------------------------------------------------------------------ deferred transforms

    @remote_function(execute="first")
    def add_dataset(self, dataset_meta: DatasetMeta, **load_kw: Any) -> None:
        super().add_dataset(dataset_meta, **load_kw)
        self._ops.setdefault(dataset_meta.get_id(), [])
        self._mix = None

    @remote_function(execute="first")
    def map(self, func: Any, dataset_meta: DatasetMeta | None = None, init_args: dict | None = None, **hf_kw: Any):
        """Record ``func`` to run on each row when it is fetched."""
        fn = as_function(func, init_args)
        op = (fn, isinstance(fn, Preprocessor))
        if self._mixed:
            if dataset_meta is not None:
                raise DataError("the datasets are already mixed; map before mix_dataset, or without dataset_meta")
            self._global_ops.append(op)
            return
        for key in self._targets(dataset_meta):
            self._ops[key].append(op)

    @remote_function(execute="first")
    def encode(self, add_generation_prompt: bool = False, batch_size: int = 1000, **_: Any) -> None:
        """Encode each row when it is fetched (``batch_size`` is the eager dataset's; unused here).

        Raises:
            AssertionError: no template is set, or its truncation is ``'split'`` (one row would become several),
                as upstream.
        """
        assert self.template is not None, "LazyDataset.encode() needs a template: call set_template(...) first"
        assert self.template.truncation_strategy != "split", (
            "LazyDataset.encode() cannot use truncation_strategy='split' (one row would become several); "
            "use 'left', 'right', 'delete' or 'raise'"
        )
        self._encode = {"add_generation_prompt": add_generation_prompt}
        self.do_encode = True
        self.add_generation_prompt = add_generation_prompt
        self.encode_kwargs = dict(_)

    @remote_function(execute="first")
    def check(self, max_problems: int = 10, **kwargs: Any) -> bool:
        """Record a check of each row at fetch time (a row failing it comes back as ``None``, which the
        DataLoader replaces), as upstream; nothing is read now."""
        self.do_check = True
        return True

    @remote_function(execute="first")
    def filter(self, func: Callable | DataFilter, dataset_meta: DatasetMeta | None = None, **hf_kw: Any) -> None:
        """Keep the rows for which ``func(row)`` is true, judged on the rows as mapped so far (runs now)."""
        self._require_data()
        if self._mixed:
            if dataset_meta is not None:
                raise DataError("the datasets are already mixed; filter before mix_dataset, or without dataset_meta")
            keep = [i for i in range(len(self)) if (row := self._row(i, encode=False)) is not None and func(row)]
            self._mix = (self._mix[0], self._mix[1], [self._mix[2][i] for i in keep]) if self._mix else None
            if self._mix is None:
                key = next(iter(self.datasets))
                self.datasets[key] = self.datasets[key].select(keep)
                self.dataset = self.datasets[key]
            return
        for key in self._targets(dataset_meta):
            source = self.datasets[key]
            keep = [
                j for j in range(len(source))
                if (row := self._source_row(key, j)) is not None and func(row)
            ]
            self.datasets[key] = source.select(keep)
        self.dataset = next(iter(self.datasets.values()))

    @remote_function(execute="first")
    def mix_dataset(self, interleave: bool = True) -> None:
        keys = list(self.datasets)
        if not keys:
            raise DataError("no dataset to mix; construct with dataset_meta= or call add_dataset first")
        sizes = [len(self.datasets[k]) for k in keys]
        if interleave:
            n, longest = len(keys), max(sizes)
            index = list(range(n * longest))
            self._mix = ("interleave", keys, index)
        else:
            self._mix = ("concat", keys, list(range(sum(sizes))))
        self._mixed = True

    # ------------------------------------------------------------------ fetching

    def _locate(self, i: int) -> tuple[str, int]:
        if self._mix is None:
            return next(iter(self.datasets)), i
        kind, keys, index = self._mix
        position = index[i]
        if kind == "interleave":
            key = keys[position % len(keys)]
            return key, (position // len(keys)) % len(self.datasets[key])
        offsets, total = [], 0
        for k in keys:
            offsets.append(total)
            total += len(self.datasets[k])
        slot = bisect_right(offsets, position) - 1
        return keys[slot], position - offsets[slot]

    def _source_row(self, key: str, j: int) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self.datasets[key][j]
        for fn, replace in self._ops.get(key, []):
            row = _call_on_row(fn, row, replace) if row is not None else None
        return row

    def _row(self, i: int, encode: bool = True) -> dict[str, Any] | None:
        key, j = self._locate(i)
        row = self._source_row(key, j)
        for fn, replace in self._global_ops:
            row = _call_on_row(fn, row, replace) if row is not None else None
        if row is not None and self.do_check and self._row_problem(row):
            return None
        if row is None or not encode or self._encode is None:
            return row
        assert self.template is not None
        features = self.template.encode_many([row], **self._encode)[0]
        if not features or features[0]["length"] == 0:
            return None
        return {**row, **features[0]}

    def __len__(self) -> int:
        self._require_data()
        if self._mix is not None:
            return len(self._mix[2])
        return len(self.dataset)

    # a row a filter drops at fetch time is None (the DataLoader replaces it): wider than the eager Dataset's
    def __getitem__(self, index: int) -> dict[str, Any] | None:  # type: ignore[override]
        self._require_data()
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        return self._row(index)

    def __iter__(self):
        return (self[i] for i in range(len(self)))
