"""The driver's handle on a component that runs in Ray actors: :class:`RemoteProxy` and :class:`LazyResult`.

``make_remote(cls, execute, args, kwargs)`` builds the actors (one per rank of the group for ``execute='all'``,
one for ``'first'``), sets each up like a torchrun rank, and returns a proxy. Calling a method on the proxy reads
the method's ``_twinkle_remote`` options (``remote_function``), splits the arguments over the workers
(:mod:`._dispatch`), submits one Ray call per worker and merges the results. With lazy collection the call returns
a :class:`LazyResult` at once; it resolves the first time it is used (printed, indexed, compared, ...).

Calls on one proxy run in the order they were made (Ray keeps per-caller order on an actor), so a lazy
``forward_backward`` followed by ``clip_grad_and_step`` is safe.

Consecutive lazy calls on one proxy are sent as one Ray task per worker (``TwinkleWorker.run_batch``) while that
proxy's workers are still busy with earlier calls: a training loop that runs ahead of its workers then costs a
Ray call per worker every few steps instead of one per method call. The queue is sent before anything waits on it
or could depend on it: reading a result, a non-lazy call, a call on another proxy, an attribute read, iteration,
handing the proxy to another call, ``TWINKLE_RAY_MAX_BATCH`` (default 16) queued calls, and the end of the script;
and at once whenever the workers are idle. ``TWINKLE_RAY_MAX_BATCH=1`` sends every call on its own. In a batch, a
call that fails stops the calls queued after it on that worker (they fail with a "was not run" error that names
the failure, which is the one reported). A failed lazy call is not lost when nobody reads its result: the next call on any proxy raises it, and so does the end of the script (exit status 1).
"""

from __future__ import annotations

import atexit
import collections
import inspect
import os
import sys
import time
import traceback
from typing import Any

from twinkle.errors import ConfigError
from twinkle.infra.ray._cluster import GroupPlacement, cluster_settings, get_placement
from twinkle.infra.ray._dispatch import collect_results, dispatch_args, result_ranks
from twinkle.infra.ray._errors import RemoteCallError
from twinkle.infra.ray._worker import CallFailed, TwinkleWorker
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.infra.ray")

__all__ = ["LazyResult", "RemoteProxy", "make_remote"]

# Options of a method that remote_function did not decorate: run it everywhere (it may use a collective), return
# rank 0's answer.
DEFAULT_OPTIONS = {"dispatch": "all", "execute": "all", "collect": "first", "sync": False, "lazy_collect": None}
# A bundle's resource is the device; every actor placed on it takes only a sliver, so a model, a sampler and a
# dataset can share a group's ranks the way they share a torchrun rank's device.
_SHARE = 0.01
# How many unread lazy calls the driver may run ahead of the workers before it waits for the oldest.
MAX_PENDING = int(os.environ.get("TWINKLE_RAY_MAX_PENDING", "32"))
# How many consecutive lazy calls on one proxy may travel as one Ray task per worker (1: no batching).
MAX_BATCH = max(1, int(os.environ.get("TWINKLE_RAY_MAX_BATCH", "16")))

_actor_class: Any = None


def _remote_worker_class() -> Any:
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(TwinkleWorker)
    return _actor_class


# ---------------------------------------------------------------- getting results


def _raise_remote(exc: BaseException, label: str) -> None:
    import ray

    if isinstance(exc, RemoteCallError) and not isinstance(exc, ray.exceptions.RayError):
        raise exc
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RemoteCallError):
        raise cause from cause.cause
    if isinstance(exc, ray.exceptions.RayActorError):
        raise RemoteCallError(
            f"{label}: its Ray worker died ({type(exc).__name__}: {exc}); look at the worker's log above for the "
            f"reason (out of memory, a crash in native code)",
            method=label,
        ) from None
    raise RemoteCallError(f"{label} failed: {type(exc).__name__}: {exc}", method=label) from None


# While waiting for a call, how often the workers that already finished are checked for a failure (the others may
# be stuck in a collective with the one that failed, and would never finish).
_FAILURE_CHECK_S = 0.25


def _get_fail_fast(refs: list[Any], label: str) -> list[Any]:
    """``ray.get`` every ref, but raise as soon as any one fails (its peers may be stuck in a collective).

    One blocking wait for all of them in the common case: each wake-up of a waiting driver costs CPU that the
    workers on the same machine would rather have.
    """
    import ray

    if not refs:
        return []
    pending, wait_s = list(refs), 0.0
    while True:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=wait_s)
        if not pending:
            break
        for ref in ready:
            _raise_if_failed(ref, pending, label)
        wait_s = _FAILURE_CHECK_S
    try:
        values = ray.get(refs)  # one round trip for all of them
    except Exception:  # noqa: BLE001 - find the one that failed, for its own message
        for ref in refs:
            _raise_if_failed(ref, [], label)
        raise
    for value in values:
        if isinstance(value, CallFailed):
            raise value.error from value.error.cause
    return values


def _raise_if_failed(ref: Any, peers: list[Any], label: str) -> None:
    import ray

    try:
        value = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - translated into a RemoteCallError
        _settle_quietly(peers)
        _raise_remote(exc, label)
    if isinstance(value, CallFailed):
        _settle_quietly(peers)
        raise value.error from value.error.cause


def _settle_quietly(refs: list[Any], timeout: float = 1.0) -> None:
    """Read the peers of a failed call that finish soon, so Ray does not log their (same) error as unhandled."""
    import ray

    if not refs:
        return
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in ready:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - the first failure is the one reported
            pass


class LazyResult:
    """The future of a proxy call; it resolves (``result()``) the first time it is used.

    Printing, formatting, indexing, iterating, comparing, arithmetic and attribute access all resolve it, so
    ``print(model.calculate_metric(True))`` and ``out['loss']`` read as if the call were synchronous.
    """

    __slots__ = ("_refs", "_collect", "_mesh", "_ranks", "_label", "_value", "_state", "_error")

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
            except BaseException as exc:
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
            _flush()
        try:
            values = _get_fail_fast(self._refs, self._label)
            self._value = [values[r] for r in self._ranks]
            self._state = "fetched"
        except BaseException as exc:
            self._state, self._error = "failed", exc
        self._refs = []
        if self._state == "failed" and _not_run(self._error):
            # a call queued before this one failed and nobody has read it: report that one, the cause
            for earlier in list(_pending):
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


def _resolve(value: Any) -> Any:
    """Replace futures by their values (top level, and inside lists, tuples and dicts) before dispatching."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is LazyResult:
        return value.result()
    if isinstance(value, (list, tuple)):
        if not value or set(map(type, value)) <= _ATOMS:
            return value
        resolved = [_resolve(v) for v in value]
        if all(new is old for new, old in zip(resolved, value)):
            return value  # nothing was a future: keep the caller's object (and its type)
        return resolved if isinstance(value, list) else tuple(resolved)
    if isinstance(value, dict):
        resolved_items = {k: _resolve(v) for k, v in value.items()}
        if all(resolved_items[k] is v for k, v in value.items()):
            return value
        return resolved_items
    return value


# ---------------------------------------------------------------- the batch queue

# Lazy calls not sent yet, all on one proxy and one set of its workers (_queue_owner): (method, per-worker
# (args, kwargs), the call's LazyResult, whether every worker gets the same arguments).
_queue: list[tuple[str, list[tuple[tuple, dict]], LazyResult, bool]] = []
_queue_owner: tuple[Any, int] | None = None


def _flush() -> None:
    """Send the queued calls: one Ray task per worker (``run_batch``), or a plain ``call`` for a single one."""
    global _queue, _queue_owner
    if not _queue:
        return
    queued, (proxy, n_workers) = _queue, _queue_owner
    _queue, _queue_owner = [], None
    try:
        _send(queued, proxy._workers[:n_workers])
    except BaseException as exc:  # the calls never left: each of them fails with the reason
        for _, _, lazy, _ in queued:
            if lazy._refs is None:
                lazy._refs, lazy._state, lazy._error = [], "failed", exc
        raise
    object.__setattr__(proxy, "_in_flight", queued[-1][2]._refs)


def _send(queued: list[tuple[str, list[tuple[tuple, dict]], LazyResult, bool]], workers: list[Any]) -> None:
    if len(queued) == 1:
        import ray

        name, calls, lazy, shared = queued[0]
        if shared:
            packed = ray.put(calls[0])  # one copy in the object store instead of one per worker
            lazy._refs = [w.call_packed.remote(name, packed) for w in workers]
        else:
            lazy._refs = [w.call.remote(name, a, k) for w, (a, k) in zip(workers, calls)]
    else:
        per_worker = []
        for i, worker in enumerate(workers):
            items = [(name, calls[i][0], calls[i][1]) for name, calls, _, _ in queued]
            per_worker.append(worker.run_batch.options(num_returns=len(items)).remote(items))
        for j, (_, _, lazy, _) in enumerate(queued):
            lazy._refs = [refs[j] for refs in per_worker]


# ---------------------------------------------------------------- unread futures


_pending: collections.deque[LazyResult] = collections.deque()
# Polling the unread calls costs the driver a Ray round trip; doing it at most this often keeps a fast loop cheap
# while a failure still surfaces within a step or two.
_POLL_INTERVAL_S = 0.05
_last_poll = 0.0


def _not_run(exc: BaseException) -> bool:
    return getattr(exc, "remote_type", "") == "NotRun"


def _settle_many(lazies: list[LazyResult]) -> None:
    """Settle several calls with one wait and one ``ray.get``; after a failure, one by one, so that each call keeps
    its own error."""
    lazies = [lazy for lazy in lazies if lazy._state == "pending"]
    if len(lazies) > 1:
        if any(lazy._refs is None for lazy in lazies):
            _flush()
        refs = [ref for lazy in lazies for ref in lazy._refs]
        try:
            values = _get_fail_fast(refs, lazies[0]._label)
        except Exception:  # noqa: BLE001 - sorted out call by call below
            pass
        else:
            start = 0
            for lazy in lazies:
                mine = values[start:start + len(lazy._refs)]
                start += len(lazy._refs)
                lazy._value, lazy._state, lazy._refs = [mine[r] for r in lazy._ranks], "fetched", []
            return
    for lazy in lazies:
        lazy._settle()


def _drain(block: bool = False) -> None:
    """Settle the unread calls that have finished; raise the first failure among them."""
    import ray

    while _pending and _pending[0]._state != "pending":
        _pending.popleft()
    if not _pending:
        return
    if len(_pending) > MAX_PENDING:  # calls read out of order leave settled ones behind the head: drop them
        still_pending = [lazy for lazy in _pending if lazy._state == "pending"]
        _pending.clear()
        _pending.extend(still_pending)
    if block or len(_pending) > MAX_PENDING:
        # with batching, wait down to half the window so that the calls made meanwhile can share a Ray task
        keep = 0 if block else (MAX_PENDING if MAX_BATCH == 1 else MAX_PENDING // 2)
        _flush()
        settled = [_pending.popleft() for _ in range(len(_pending) - keep)]
        _settle_many(settled)
        for lazy in settled:
            if lazy._state == "failed" and not _not_run(lazy._error):
                raise lazy._error
        return
    global _last_poll
    now = time.monotonic()
    if now - _last_poll < _POLL_INTERVAL_S:
        return
    _last_poll = now
    refs = [ref for lazy in _pending if lazy._refs is not None for ref in lazy._refs]
    if not refs:
        return
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    ready_set = set(ready)
    still: list[LazyResult] = []
    first_error: BaseException | None = None
    finished: list[LazyResult] = []
    for lazy in _pending:
        if lazy._state == "pending" and lazy._refs is not None and all(ref in ready_set for ref in lazy._refs):
            finished.append(lazy)
        elif lazy._state == "pending":
            still.append(lazy)
    _pending.clear()
    _pending.extend(still)
    _settle_many(finished)
    for lazy in finished:
        # a call skipped after a failure is not reported, the failure itself is
        if lazy._state == "failed" and not _not_run(lazy._error):
            first_error = first_error or lazy._error
    if first_error is not None:
        raise first_error


def _drain_at_exit() -> None:
    """At the end of the script, wait for the unread calls; a failure among them makes the exit status 1."""
    import ray

    if not ray.is_initialized():
        return  # Ray was shut down first: the calls went with it, and waiting would start a new cluster
    try:
        _drain(block=True)
    except BaseException:  # noqa: BLE001
        sys.stderr.write("twinkle: a remote call failed and its result was never read:\n")
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            import ray

            ray.shutdown()
        finally:
            os._exit(1)


_exit_hook_installed = False


def _install_exit_hook() -> None:
    # Registered after ray.init (which registers ray.shutdown), so it runs first: the workers are still alive.
    global _exit_hook_installed
    if not _exit_hook_installed:
        atexit.register(_drain_at_exit)
        _exit_hook_installed = True


# ---------------------------------------------------------------- the proxy


class _RemoteMethod:
    __slots__ = ("_proxy", "_name", "_options", "__name__", "__doc__")

    def __init__(self, proxy: RemoteProxy, name: str, options: dict[str, Any], doc: str | None) -> None:
        self._proxy = proxy
        self._name = name
        self._options = options
        self.__name__ = name
        self.__doc__ = doc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._proxy._invoke(self._name, self._options, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._proxy._label}.{self._name} on {self._proxy._group!r}>"


class RemoteProxy:
    """A component living in Ray actors, used from the driver (or from another actor) like the local object."""

    def __init__(self, cls: type, workers: list[Any], group: str, mesh: DeviceMesh | None, execute: str,
                 lazy: bool, label: str | None = None) -> None:
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_workers", list(workers))
        object.__setattr__(self, "_group", group)
        object.__setattr__(self, "_mesh", mesh)
        object.__setattr__(self, "_execute", execute)
        object.__setattr__(self, "_lazy", lazy)
        object.__setattr__(self, "_label", label or cls.__name__)
        object.__setattr__(self, "_methods", {})
        object.__setattr__(self, "_in_flight", [])  # the refs of the last call sent (an actor runs calls in order)

    # ---------------------------------------------------------------- attribute access

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_cls", "_workers", "_methods", "_in_flight"):
            raise AttributeError(name)
        cached = self._methods.get(name)
        if cached is not None:
            return cached
        static = inspect.getattr_static(self._cls, name, _MISSING)
        if isinstance(static, (staticmethod, classmethod)):
            static = static.__func__
        if inspect.isfunction(static) or inspect.ismethoddescriptor(static):
            options = {**DEFAULT_OPTIONS, **(getattr(static, "_twinkle_remote", None) or {})}
            method = _RemoteMethod(self, name, options, getattr(static, "__doc__", None))
            self._methods[name] = method
            return method
        if static is _MISSING or isinstance(static, property) or hasattr(static, "__get__"):
            # an instance attribute or a property: read rank 0's value
            _flush()
            worker = self._workers[0]
            try:
                return _get_fail_fast([worker.get_attr.remote(name)], f"{self._label}.{name}")[0]
            except RemoteCallError as exc:
                if exc.remote_type == "AttributeError":
                    raise AttributeError(f"{self._label} (remote on {self._group!r}) has no attribute {name!r}") \
                        from None
                raise
        return static  # a plain class attribute is the same everywhere

    def __setattr__(self, name: str, value: Any) -> None:
        """Set an attribute on every worker (synchronously)."""
        _flush()
        _get_fail_fast([w.call.remote("__setattr__", (name, value), {}) for w in self._workers],
                       f"{self._label}.{name}")

    def __repr__(self) -> str:
        return f"<RemoteProxy {self._label} on group {self._group!r}: {len(self._workers)} Ray worker(s)>"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._cls)) | set(super().__dir__()))

    def __reduce__(self):
        _flush()  # whoever receives the proxy sees the effect of every call made on it so far
        return (_rebuild_proxy, (self._cls, self._workers, self._group, self._mesh, self._execute, self._lazy,
                                 self._label))

    # ---------------------------------------------------------------- calls

    @property
    def remote_mesh(self) -> DeviceMesh | None:
        """The mesh the workers were built with (dp=1 for an ``execute='first'`` component)."""
        return self._mesh

    @property
    def remote_workers(self) -> list[Any]:
        """The Ray actor handles, one per rank."""
        return list(self._workers)

    def _busy(self) -> bool:
        """Whether the last call sent to this proxy's workers is still running (without waiting)."""
        refs = self._in_flight
        if not refs:
            return False
        import ray

        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if len(ready) == len(refs):
            object.__setattr__(self, "_in_flight", [])
            return False
        return True

    def _invoke(self, name: str, options: dict[str, Any], args: tuple, kwargs: dict) -> Any:
        global _queue_owner
        _drain()
        label = f"{self._label}.{name}"
        args = tuple(_resolve(a) for a in args)
        kwargs = {k: _resolve(v) for k, v in kwargs.items()}
        workers = self._workers if options["execute"] != "first" else self._workers[:1]
        mesh = self._mesh if len(workers) == len(self._workers) else None
        dispatch = options["dispatch"]
        calls = dispatch_args(dispatch, args, kwargs, len(workers), mesh)
        ranks = result_ranks(options["collect"], dispatch, len(workers), mesh)
        lazy = LazyResult(None, options["collect"], mesh, ranks, label)
        lazy_collect = options["lazy_collect"]
        lazy_mode = not options["sync"] and (self._lazy if lazy_collect is None else lazy_collect)
        owner = (self, len(workers))
        shared = dispatch == "all" and len(workers) > 1 and bool(args or kwargs)
        if _queue and (_queue_owner[0] is not self or _queue_owner[1] != owner[1]):
            _flush()
        _queue_owner = owner
        _queue.append((name, calls, lazy, shared))
        if lazy_mode and (len(_queue) >= MAX_BATCH or not self._busy()):
            _flush()
        if not lazy_mode:
            return lazy.result()  # sends the queue, this call last
        _pending.append(lazy)
        return lazy

    def _call_first(self, method: str, *args: Any) -> Any:
        _flush()
        worker = self._workers[0]
        return _get_fail_fast([getattr(worker, method).remote(*args)], f"{self._label}.{method}")[0]

    # ---------------------------------------------------------------- container protocol (added per class)

    def _remote_len(self) -> int:
        _drain()
        return self._call_first("call", "__len__", (), {})

    def _remote_getitem(self, key: Any) -> Any:
        return self._call_first("call", "__getitem__", (key,), {})

    def _remote_getitems(self, keys: list[Any]) -> list[Any]:
        return self._call_first("getitems", list(keys))

    def _remote_contains(self, item: Any) -> bool:
        return self._call_first("call", "__contains__", (item,), {})

    def _remote_iter(self):
        """Iterate on rank 0's object, one item ahead: the worker builds item k+1 while the driver uses item k."""
        _drain()
        _flush()
        worker = self._workers[0]
        label = f"{self._label}.__iter__"
        key = _get_fail_fast([worker.iter_start.remote()], label)[0]
        upcoming = worker.iter_next.remote(key, 1)
        finished = False
        try:
            while True:
                items, finished = _get_fail_fast([upcoming], f"{self._label}.__next__")[0]
                if not finished:
                    upcoming = worker.iter_next.remote(key, 1)
                yield from items
                if finished:
                    return
        finally:
            if not finished:
                worker.iter_close.remote(key)

    def _remote_call(self, *args: Any, **kwargs: Any) -> Any:
        options = {**DEFAULT_OPTIONS, **(getattr(self._cls.__call__, "_twinkle_remote", None) or {})}
        return self._invoke("__call__", options, args, kwargs)


_MISSING = object()
_PROTOCOL = {
    "__len__": RemoteProxy._remote_len,
    "__getitem__": RemoteProxy._remote_getitem,
    "__contains__": RemoteProxy._remote_contains,
    "__iter__": RemoteProxy._remote_iter,
    "__call__": RemoteProxy._remote_call,
}
_proxy_classes: dict[type, type] = {}


def _proxy_class(cls: type) -> type:
    """A RemoteProxy subclass with exactly the container dunders ``cls`` has (so ``len()``/``iter()`` behave)."""
    proxy_cls = _proxy_classes.get(cls)
    if proxy_cls is None:
        methods = {name: fn for name, fn in _PROTOCOL.items() if getattr(cls, name, None) is not None
                   and getattr(cls, name) is not getattr(object, name, None)}
        if "__getitem__" in methods:
            methods["__getitems__"] = RemoteProxy._remote_getitems
        proxy_cls = type(f"Remote{cls.__name__}", (RemoteProxy,), methods)
        _proxy_classes[cls] = proxy_cls
    return proxy_cls


def _rebuild_proxy(cls: type, workers: list[Any], group: str, mesh: Any, execute: str, lazy: bool,
                   label: str) -> RemoteProxy:
    return _proxy_class(cls)(cls, workers, group, mesh, execute, lazy, label)


# ---------------------------------------------------------------- construction


def _find_mesh(args: tuple, kwargs: dict) -> DeviceMesh | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, DeviceMesh):
            return value
    return None


def _replace_mesh(args: tuple, kwargs: dict, mesh: DeviceMesh) -> tuple[tuple, dict]:
    return (tuple(mesh if isinstance(a, DeviceMesh) else a for a in args),
            {k: (mesh if isinstance(v, DeviceMesh) else v) for k, v in kwargs.items()})


def _default_device_type(placement: GroupPlacement) -> str:
    return "cpu" if placement.resource == "CPU" else ("npu" if placement.resource == "NPU" else "cuda")


def _dataloader_min_batch(cls: type, args: tuple, kwargs: dict) -> None:
    """A Ray DataLoader hands whole batches to ``slice_dp`` calls: drop a short last batch (min = batch_size)."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    if "batch_size" not in params or "min_batch_size" not in params:
        return
    try:
        bound = inspect.signature(cls.__init__).bind_partial(None, *args, **kwargs).arguments
    except TypeError:
        return
    if bound.get("min_batch_size") is None and bound.get("batch_size") is not None:
        kwargs["min_batch_size"] = bound["batch_size"]


# The driver's settings that a torchrun rank would inherit from its launcher. A Ray cluster that the driver joined
# (RAY_ADDRESS) started its workers with its own environment, so these are handed over explicitly.
_INHERITED_PREFIXES = ("TWINKLE_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "MODELSCOPE_", "TOKENIZERS_", "NCCL_",
                       "GLOO_", "TORCH_")
_INHERITED_NAMES = ("OMP_NUM_THREADS", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "CUBLAS_WORKSPACE_CONFIG")
_NOT_INHERITED = ("TWINKLE_RAY_WORKER", "TWINKLE_RAY_GROUP", "TWINKLE_MODE")


def _job_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if (key.startswith(_INHERITED_PREFIXES) or key in _INHERITED_NAMES) and key not in _NOT_INHERITED
    }


def _actor_options(placement: GroupPlacement, rank: int) -> dict[str, Any]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    options: dict[str, Any] = {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=placement.placement_group, placement_group_bundle_index=rank
        ),
        "num_cpus": 0,
    }
    if placement.resource == "CPU":
        options["num_cpus"] = _SHARE
    elif placement.resource == "GPU":
        # Ray sets CUDA_VISIBLE_DEVICES from this request; several devices per worker cannot be shared.
        options["num_gpus"] = _SHARE if placement.per_rank == 1 else placement.per_rank
    else:
        options["resources"] = {placement.resource: _SHARE if placement.per_rank == 1 else placement.per_rank}
    return options


def make_remote(cls: type, execute: str, args: tuple, kwargs: dict) -> RemoteProxy:
    """Build ``cls(*args, **kwargs)`` in Ray actors on ``kwargs['remote_group']`` and return its proxy.

    Raises:
        ConfigError: Ray mode not initialised, an unknown group, or a mesh that does not fit the group.
        RemoteCallError: the constructor failed in a worker (the remote traceback is in the message).
    """
    import ray

    from twinkle.infra import _state

    _flush()
    kwargs = dict(kwargs)
    group_name = kwargs.pop("remote_group")
    placement = get_placement(group_name)
    settings = cluster_settings()
    device_type = _default_device_type(placement)
    if execute == "first":
        n = 1
        mesh = DeviceMesh.from_sizes(dp_size=1, device_type=device_type)
        args, kwargs = _replace_mesh(args, kwargs, mesh)
        _dataloader_min_batch(cls, args, kwargs)
    else:
        n = placement.num_ranks
        mesh = _find_mesh(args, kwargs)
        if mesh is None:
            global_mesh = settings.global_mesh
            mesh = global_mesh if global_mesh is not None and global_mesh.world_size == n else \
                DeviceMesh.from_sizes(dp_size=n, device_type=device_type)
        if mesh.world_size != n:
            raise ConfigError(
                f"{cls.__name__} on group {group_name!r}: its DeviceMesh spans {mesh.world_size} ranks but the group "
                f"has {n}; give a mesh whose sizes multiply to {n}"
            )
    label = cls.__name__
    actor_cls = _remote_worker_class()
    workers = [actor_cls.options(**_actor_options(placement, rank)).remote(label, rank) for rank in range(n)]
    try:
        master_addr, master_port = _get_fail_fast([workers[0].address.remote()], f"{label}.__init__")[0]
        local = placement.local_ranks()
        job_env = _job_environment()
        init_kwargs = {
            "seed": settings.seed,
            "global_device_mesh": mesh,
            "full_determinism": settings.options.get("full_determinism", False),
            "lazy_collect": _state.get_lazy_collect(),
        }
        builds = []
        for rank, worker in enumerate(workers):
            local_rank, local_world = local[rank] if execute != "first" else (0, 1)
            env = {
                "RANK": str(rank),
                "WORLD_SIZE": str(n),
                "LOCAL_RANK": str(local_rank),
                "LOCAL_WORLD_SIZE": str(local_world),
                "GROUP_RANK": "0",
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
                "TWINKLE_RAY_GROUP": group_name,
            }
            builds.append(worker.build.remote({**job_env, **env}, init_kwargs, cls, args, kwargs, os.getcwd()))
        _get_fail_fast(builds, f"{label}.__init__")
    except BaseException:
        for worker in workers:
            ray.kill(worker)
        raise
    _install_exit_hook()
    logger.debug("%s: %d Ray worker(s) on group %r, mesh %r", label, n, group_name, mesh)
    return _proxy_class(cls)(cls, workers, group_name, mesh, execute, _state.get_lazy_collect(), label)
