"""The future of a proxy call (:class:`LazyResult`), and resolving futures inside call arguments."""

from __future__ import annotations

from typing import Any

from twinkle.infra.ray._call_queue import CALLS, is_not_run
from twinkle.infra.ray._dispatch import collect_results
from twinkle.infra.ray._results import get_fail_fast


class LazyResult:
    """The future of a proxy call; it resolves (``result()``) the first time it is used.

    Printing, formatting, indexing, iterating, comparing, arithmetic and attribute access all resolve it, so
    ``print(model.calculate_metric(True))`` and ``out['loss']`` read as if the call were synchronous.
    """

    __slots__ = ("_collect", "_error", "_label", "_mesh", "_ranks", "_refs", "_state", "_value")

    def __init__(self, refs: list[Any] | None, collect: Any, mesh: Any, ranks: list[int], label: str) -> None:
        self._refs = refs  # None while the call waits in the batch queue (not sent yet)
        self._collect = collect
        self._mesh = mesh
        self._ranks = ranks
        self._label = label
        self._value: Any = None
        self._state = "pending"  # pending -> fetched (the workers' results, not merged yet) -> done | failed
        self._error: BaseException | None = None

    def result(self) -> Any:
        """Wait for every worker, merge their results with the method's collect mode, and return the value.

        Raises:
            RemoteCallError: the call failed in a worker (method name, rank and remote traceback in the message).
        """
        self._settle()
        if self._state == "fetched":
            # merged on first read only: a training loop that never looks at its losses never pays for it
            try:
                self._value = collect_results(self._collect, self._value, self._mesh)
                self._state = "done"
            except BaseException as exc:  # noqa: BLE001 - kept, and raised just below and on every later read
                self._state, self._value, self._error = "failed", None, exc
        if self._state == "failed":
            assert self._error is not None
            raise self._error
        return self._value

    def _settle(self) -> None:
        """Wait for every worker and keep their results (a failure is kept too, and raised by ``result``)."""
        if self._state != "pending":
            return
        if self._refs is None:
            CALLS.flush()
        try:
            values = get_fail_fast(self._refs or [], self._label)
            self._value = [values[r] for r in self._ranks]
            self._state = "fetched"
        except BaseException as exc:  # noqa: BLE001 - kept, and raised to whoever reads the result
            self._state, self._error = "failed", exc
        self._refs = []
        if self._state == "failed" and is_not_run(self._error):
            # a call queued before this one failed and nobody has read it: report that one, the cause
            for earlier in list(CALLS.pending):
                if earlier is self:
                    break
                if earlier._state == "pending":
                    earlier.result()

    def done(self) -> bool:
        """Whether every worker has finished (without waiting)."""
        if self._state != "pending":
            return True
        if self._refs is None:
            return False
        import ray

        ready, _ = ray.wait(self._refs, num_returns=len(self._refs), timeout=0)
        return len(ready) == len(self._refs)

    def __reduce__(self):
        # Handing a future to another call (or actor) hands over its value.
        return (_identity, (self.result(),))

    def __repr__(self) -> str:
        return repr(self.result())

    def __str__(self) -> str:
        return str(self.result())

    def __format__(self, spec: str) -> str:
        return format(self.result(), spec)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.result(), name)

    def __getitem__(self, key: Any) -> Any:
        return self.result()[key]

    def __iter__(self):
        return iter(self.result())

    def __len__(self) -> int:
        return len(self.result())

    def __contains__(self, item: Any) -> bool:
        return item in self.result()

    def __bool__(self) -> bool:
        return bool(self.result())

    def __float__(self) -> float:
        return float(self.result())

    def __int__(self) -> int:
        return int(self.result())

    def __index__(self) -> int:
        return self.result().__index__()

    def __eq__(self, other: Any) -> bool:
        return self.result() == _value_of(other)

    def __ne__(self, other: Any) -> bool:
        return self.result() != _value_of(other)

    __hash__ = None  # type: ignore[assignment]


def _identity(value: Any) -> Any:
    return value


def _value_of(value: Any) -> Any:
    return value.result() if isinstance(value, LazyResult) else value


def _forward_operator(name: str) -> None:
    def op(self: LazyResult, *others: Any) -> Any:
        return getattr(self.result(), name)(*(_value_of(o) for o in others))

    op.__name__ = name
    setattr(LazyResult, name, op)


for _op in ("__lt__", "__le__", "__gt__", "__ge__", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
            "__rmul__", "__truediv__", "__rtruediv__", "__neg__", "__abs__", "__round__"):
    _forward_operator(_op)


# Values with nothing inside to resolve; a list made only of these (token ids, texts) is passed through after one
# C-speed scan of its element types instead of a Python-level walk.
_ATOMS = frozenset({int, float, bool, str, bytes, type(None)})


def resolve(value: Any) -> Any:
    """Replace futures by their values (top level, and inside lists, tuples and dicts) before dispatching."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is LazyResult:
        return value.result()
    if isinstance(value, (list, tuple)):
        if not value or set(map(type, value)) <= _ATOMS:
            return value
        resolved = [resolve(v) for v in value]
        if all(new is old for new, old in zip(resolved, value, strict=True)):
            return value  # nothing was a future: keep the caller's object (and its type)
        return resolved if isinstance(value, list) else tuple(resolved)
    if isinstance(value, dict):
        resolved_items = {k: resolve(v) for k, v in value.items()}
        if all(resolved_items[k] is v for k, v in value.items()):
            return value
        return resolved_items
    return value
