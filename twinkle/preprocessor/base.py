"""``Preprocessor`` (raw columns -> trajectory columns) and ``DataFilter`` (row -> keep?)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Preprocessor:
    """Turn a batch of raw rows into the standard ``Trajectory`` form (``messages``, ``user_data``, ...).

    Called with a columns dict (what ``datasets.Dataset.map(batched=True)`` passes) and returns a columns dict.
    Subclasses usually implement ``preprocess(row) -> row | list[row] | None`` (``None`` drops the row, a list
    expands it); the base ``__call__`` handles the row/column conversion. The output replaces the input columns.
    """

    def __call__(self, columns: Mapping[str, list]) -> dict[str, list]:
        keys = list(columns)
        n = len(columns[keys[0]]) if keys else 0
        out_rows: list[dict[str, Any]] = []
        for i in range(n):
            result = self.preprocess({k: columns[k][i] for k in keys})
            if result is None:
                continue
            out_rows.extend(result if isinstance(result, list) else [result])
        return rows_to_columns(out_rows)

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]] | None:
        raise NotImplementedError(f"{type(self).__name__} must implement preprocess(row) or __call__(columns)")


class DataFilter:
    """Decide per row whether to keep it: ``__call__(row) -> bool``."""

    def __call__(self, row: Mapping[str, Any]) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(row) -> bool")


Filter = DataFilter  # the name the upstream README uses


def rows_to_columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(key)
    return {k: [row.get(k) for row in rows] for k in keys}
