"""How a proxy call's arguments are split over a group's workers, and how their results are merged back.

Pure functions over plain values (lists, dicts, tensors, arrays): no Ray here, so they are unit-tested directly.

Dispatch modes (``remote_function(dispatch=...)``):

* ``'all'``: every worker gets the same arguments.
* ``'slice'``: every list/tuple/tensor argument is split evenly over the workers (the first ``n % k`` get one more).
* ``'slice_dp'``: every batch-like argument is split per *data rank* with ``mesh.get_slice``; workers that share a
  data rank (tensor- or pipeline-parallel peers) get the same part. A worker that would get nothing raises
  :class:`~twinkle.errors.BatchSizeError` ("Batch too small").

Collect modes (``remote_function(collect=...)``): ``'none'`` (the single result, or the list of them), ``'first'``,
``'flatten'``, ``'sum'``, ``'mean'`` (dicts key by key), ``'last_pp'`` (one result per data rank, from the last
pipeline stage), or a callable ``f(results)`` / ``f(results, mesh)``. ``'sum'``/``'mean'`` reduce numbers and
same-shaped tensors element-wise; per-sample tensors whose shapes differ between ranks (``logps`` of each rank's
slice) cannot be averaged, so they are concatenated back into one batch, zero-padded on the right.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from twinkle.errors import BatchSizeError, ConfigError

__all__ = ["COLLECT_MODES", "DISPATCH_MODES", "collect_results", "dispatch_args", "result_ranks"]

DISPATCH_MODES = ("all", "slice", "slice_dp")
COLLECT_MODES = ("none", "first", "flatten", "sum", "mean", "last_pp")


def _torch():
    # torch is a hard dependency of twinkle, but importing it lazily keeps this module cheap on the driver
    import torch

    return torch


def _batch_len(value: Any) -> int | None:
    """The number of samples in a batch-like value, or ``None`` when the value is not a batch."""
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, np.ndarray) and value.ndim >= 1:
        return int(value.shape[0])
    torch = _torch()
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        return int(value.shape[0])
    if isinstance(value, Mapping) and value:
        # A collated batch (every value a tensor/array with the same first dimension) splits along that dimension;
        # any other dict (a single sample, a config) is one argument and goes to every worker whole.
        lengths = set()
        for v in value.values():
            if (isinstance(v, np.ndarray) and v.ndim >= 1) or (isinstance(v, torch.Tensor) and v.dim() >= 1):
                lengths.add(int(v.shape[0]))
            else:
                return None
        return lengths.pop() if len(lengths) == 1 else None
    return None


def _take(value: Any, part: slice) -> Any:
    if isinstance(value, tuple):
        return tuple(value[part])
    if isinstance(value, Mapping):
        return {k: v[part] for k, v in value.items()}
    return value[part]


def _even_slice(total: int, parts: int, index: int) -> slice:
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))


def _split(args: tuple, kwargs: dict, n_workers: int, part_of: Callable[[int, int], slice]) -> list[tuple[tuple, dict]]:
    calls: list[tuple[tuple, dict]] = []
    for worker in range(n_workers):

        def cut(value: Any, worker: int = worker) -> Any:  # bound now, though cut is only called in this pass
            total = _batch_len(value)
            return value if total is None else _take(value, part_of(worker, total))

        calls.append((tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}))
    return calls


def dispatch_args(
    dispatch: str, args: tuple, kwargs: dict, n_workers: int, mesh: Any = None
) -> list[tuple[tuple, dict]]:
    """Return one ``(args, kwargs)`` per worker (worker ``i`` is global rank ``i`` of the component's mesh).

    Raises:
        ConfigError: an unknown dispatch mode, or ``'slice_dp'`` without a mesh covering the workers.
        BatchSizeError: ``'slice_dp'`` with a batch smaller than the mesh's data world size.
    """
    if callable(dispatch):
        calls = dispatch(n_workers, *args, **kwargs)
        if len(calls) != n_workers:
            raise ConfigError(f"a dispatch function must return {n_workers} (args, kwargs) pairs, got {len(calls)}")
        return list(calls)
    if dispatch == "all":
        return [(args, kwargs)] * n_workers
    if dispatch == "slice":
        return _split(args, kwargs, n_workers, lambda worker, total: _even_slice(total, n_workers, worker))
    if dispatch == "slice_dp":
        if mesh is None or mesh.world_size != n_workers:
            raise ConfigError(
                f"dispatch='slice_dp' needs a DeviceMesh covering the {n_workers} workers, got {mesh!r}; "
                f"pass device_mesh= with world_size {n_workers} when constructing the component"
            )
        data_world = mesh.data_world_size
        for value in (*args, *kwargs.values()):
            total = _batch_len(value)
            if total is not None and total < data_world:
                raise BatchSizeError(
                    f"Batch too small: {total} sample(s) for {data_world} data-parallel ranks, so a worker would "
                    f"get nothing; use a global batch_size of at least {data_world} (a multiple of it is best), "
                    f"or a DataLoader with min_batch_size={data_world} to drop a short last batch"
                )
        data_ranks = [mesh.get_data_rank(rank) for rank in range(n_workers)]
        return _split(args, kwargs, n_workers, lambda worker, total: mesh.get_slice(total, data_ranks[worker]))
    raise ConfigError(f"unknown dispatch {dispatch!r}; use one of {', '.join(DISPATCH_MODES)} or a function")


def result_ranks(collect: Any, dispatch: Any, n_workers: int, mesh: Any = None) -> list[int]:
    """Which workers' results a collect mode reads (one per data rank where peers hold duplicates)."""
    per_data_rank = collect == "last_pp" or (collect == "flatten" and dispatch == "slice_dp")
    if per_data_rank and mesh is not None and mesh.world_size == n_workers:
        return list(mesh.get_collect_ranks())
    return list(range(n_workers))


# ---------------------------------------------------------------- merging


def _concat(values: list[Any]) -> Any:
    first = values[0]
    if all(isinstance(v, (list, tuple)) for v in values):
        return [item for v in values for item in v]
    if isinstance(first, Mapping) and all(isinstance(v, Mapping) for v in values):
        return {k: _concat([v[k] for v in values]) for k in first}
    torch = _torch()
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.cat(values) if first.dim() >= 1 else torch.stack(values)
    if all(isinstance(v, np.ndarray) for v in values):
        return np.concatenate(values) if first.ndim >= 1 else np.stack(values)
    return list(values)


def _cat_padded(tensors: list[Any]) -> Any:
    """Per-sample tensors of different shapes (``logps`` [batch_i, seq_i]): one batch, zero-padded on the right."""
    torch = _torch()
    if any(t.dim() == 0 for t in tensors) or len({t.dim() for t in tensors}) > 1:
        return list(tensors)
    dims = tensors[0].dim()
    target = [max(int(t.shape[d]) for t in tensors) for d in range(1, dims)]
    padded = []
    for t in tensors:
        pad: list[int] = []
        for d in reversed(range(1, dims)):
            pad.extend([0, target[d - 1] - int(t.shape[d])])
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)


def _reduce(values: list[Any], mean: bool) -> Any:
    first = values[0]
    if isinstance(first, Mapping) and all(isinstance(v, Mapping) for v in values):
        return {k: _reduce([v[k] for v in values if k in v], mean) for k in first}
    torch = _torch()
    if all(isinstance(v, torch.Tensor) for v in values):
        if len({tuple(v.shape) for v in values}) > 1:
            return _cat_padded(values)
        total = torch.stack(values).sum(0)
        return total / len(values) if mean else total
    if all(isinstance(v, (numbers.Number, np.ndarray, np.number)) and not isinstance(v, bool) for v in values):
        total = sum(values[1:], values[0])
        return total / len(values) if mean else total
    if all(isinstance(v, str) for v in values):
        # Metric values travel as strings ("1.2345"); equal strings are one value, numeric ones are averaged.
        if len(set(values)) == 1:
            return first
        try:
            numbers_ = [float(v) for v in values]
        except ValueError:
            return list(values)
        total = sum(numbers_)
        return total / len(numbers_) if mean else total
    if all(v is None for v in values):
        return None
    if all(isinstance(v, (list, tuple)) for v in values) and len({len(v) for v in values}) == 1:
        return [_reduce(list(items), mean) for items in zip(*values, strict=True)]
    return list(values)


def collect_results(collect: Any, results: Sequence[Any], mesh: Any = None) -> Any:
    """Merge the results of the workers chosen by :func:`result_ranks`, in rank order.

    Raises:
        ConfigError: an unknown collect mode.
    """
    results = list(results)
    if callable(collect):
        params = inspect.signature(collect).parameters
        return collect(results, mesh) if len(params) >= 2 else collect(results)
    if collect not in COLLECT_MODES:
        raise ConfigError(f"unknown collect {collect!r}; use one of {', '.join(COLLECT_MODES)} or a function")
    if not results:
        return None
    if collect == "none":
        return results[0] if len(results) == 1 else results
    if collect == "first":
        return results[0]
    if collect in ("flatten", "last_pp"):
        if len(results) == 1 and not isinstance(results[0], (list, tuple)):
            return results[0]
        return _concat(results)
    return _reduce(results, mean=(collect == "mean"))
