"""Collation helpers for preference data (upstream's DPO scripts do this inline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["interleave_pairs"]

_FEATURE_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "length", "completion_mask")


def interleave_pairs(
    rows: Sequence[Mapping[str, Any]], positive_key: str = "positive", negative_key: str = "negative"
) -> list[dict[str, Any]]:
    """``[{'positive': p1, 'negative': n1}, ...]`` -> ``[p1, n1, p2, n2, ...]``, the chosen/rejected layout the
    preference losses (``DPOLoss``, ``SimPOLoss``, ``CPOLoss``, ``ORPOLoss``) and ``DPOMetric`` expect.

    Each row's other columns are kept on both sides (``{**base, **row['positive']}``, as upstream's scripts do),
    minus ``messages`` so the model sees encoded features only. A DataLoader hands each data rank a contiguous
    slice of *rows*, so interleaving after the slice keeps every pair on one rank.

    Raises:
        KeyError: a row without the two columns (encode the dataset after ``EmojiDPOProcessor``).
    """
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if positive_key not in row or negative_key not in row:
            raise KeyError(
                f"row {i} has no {positive_key!r}/{negative_key!r} columns (it has {sorted(row)}); map the data "
                f"with a preference preprocessor (EmojiDPOProcessor) and encode() it first"
            )
        base = {k: v for k, v in row.items() if k not in (positive_key, negative_key)}
        for side in (row[positive_key], row[negative_key]):
            item = {**base, **side}
            item.pop("messages", None)
            out.append(item)
    return out
