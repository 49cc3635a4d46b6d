"""The driver's handle on a component that runs in Ray actors: :class:`RemoteProxy`.

Calling a method on the proxy reads the method's ``_twinkle_remote`` options (``remote_function``), splits the
arguments over the workers (:mod:`._dispatch`), queues one Ray call per worker (:mod:`._call_queue`) and merges the
results. With lazy collection the call returns a :class:`~._lazy.LazyResult` at once; it resolves the first time it
is used (printed, indexed, compared, ...).

Calls on one proxy run in the order they were made (Ray keeps per-caller order on an actor), so a lazy
``forward_backward`` followed by ``clip_grad_and_step`` is safe. The call queue is sent before anything waits on it
or could depend on it: reading a result, a non-lazy call, a call on another proxy, an attribute read, iteration,
handing the proxy to another call, and the end of the script. A failed lazy call is not lost when nobody reads its
result: the next call on any proxy raises it, and so does the end of the script (exit status 1).

Actors are built by :func:`._actors.make_remote`.
"""

from __future__ import annotations

import inspect
from typing import Any

from twinkle.infra._job_env import stop_driver_if_asked
from twinkle.infra.ray._call_queue import CALLS, QueuedCall
from twinkle.infra.ray._dispatch import dispatch_args, result_ranks
from twinkle.infra.ray._errors import RemoteCallError
from twinkle.infra.ray._lazy import LazyResult, resolve
from twinkle.infra.ray._results import get_fail_fast
from twinkle.utils.device_mesh import DeviceMesh

__all__ = ["DEFAULT_OPTIONS", "RemoteProxy", "proxy_class"]

# Options of a method that remote_function did not decorate: run it everywhere (it may use a collective), return
# rank 0's answer.
DEFAULT_OPTIONS = {"dispatch": "all", "execute": "all", "collect": "first", "sync": False, "lazy_collect": None}


class _RemoteMethod:
    __slots__ = ("__doc__", "__name__", "_name", "_options", "_proxy")

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
            CALLS.flush()
            worker = self._workers[0]
            try:
                return get_fail_fast([worker.get_attr.remote(name)], f"{self._label}.{name}")[0]
            except RemoteCallError as exc:
                if exc.remote_type == "AttributeError":
                    raise AttributeError(f"{self._label} (remote on {self._group!r}) has no attribute {name!r}") \
                        from None
                raise
        return static  # a plain class attribute is the same everywhere

    def __setattr__(self, name: str, value: Any) -> None:
        """Set an attribute on every worker (synchronously)."""
        CALLS.flush()
        get_fail_fast([w.call.remote("__setattr__", (name, value), {}) for w in self._workers],
                       f"{self._label}.{name}")

    def __repr__(self) -> str:
        return f"<RemoteProxy {self._label} on group {self._group!r}: {len(self._workers)} Ray worker(s)>"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._cls)) | set(super().__dir__()))

    def __reduce__(self):
        CALLS.flush()  # whoever receives the proxy sees the effect of every call made on it so far
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
        stop_driver_if_asked()  # a platform replay's actors reached their last step (TWINKLE_STOP_AFTER_STEPS)
        CALLS.drain()
        label = f"{self._label}.{name}"
        args = tuple(resolve(a) for a in args)
        kwargs = {k: resolve(v) for k, v in kwargs.items()}
        workers = self._workers if options["execute"] != "first" else self._workers[:1]
        mesh = self._mesh if len(workers) == len(self._workers) else None
        dispatch = options["dispatch"]
        calls = dispatch_args(dispatch, args, kwargs, len(workers), mesh)
        ranks = result_ranks(options["collect"], dispatch, len(workers), mesh)
        lazy = LazyResult(None, options["collect"], mesh, ranks, label)
        lazy_collect = options["lazy_collect"]
        lazy_mode = not options["sync"] and (self._lazy if lazy_collect is None else lazy_collect)
        shared = dispatch == "all" and len(workers) > 1 and bool(args or kwargs)
        CALLS.enqueue(self, len(workers), QueuedCall(name, calls, lazy, shared), lazy_mode)
        if not lazy_mode:
            return lazy.result()  # sends the queue, this call last
        return lazy

    def _call_first(self, method: str, *args: Any) -> Any:
        CALLS.flush()
        worker = self._workers[0]
        return get_fail_fast([getattr(worker, method).remote(*args)], f"{self._label}.{method}")[0]

    # ---------------------------------------------------------------- container protocol (added per class)

    def _remote_len(self) -> int:
        CALLS.drain()
        return self._call_first("call", "__len__", (), {})

    def _remote_getitem(self, key: Any) -> Any:
        return self._call_first("call", "__getitem__", (key,), {})

    def _remote_getitems(self, keys: list[Any]) -> list[Any]:
        return self._call_first("getitems", list(keys))

    def _remote_contains(self, item: Any) -> bool:
        return self._call_first("call", "__contains__", (item,), {})

    def _remote_iter(self):
        """Iterate on rank 0's object, one item ahead: the worker builds item k+1 while the driver uses item k."""
        CALLS.drain()
        CALLS.flush()
        worker = self._workers[0]
        label = f"{self._label}.__iter__"
        key = get_fail_fast([worker.iter_start.remote()], label)[0]
        upcoming = worker.iter_next.remote(key, 1)
        finished = False
        try:
            while True:
                items, finished = get_fail_fast([upcoming], f"{self._label}.__next__")[0]
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


def proxy_class(cls: type) -> type:
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
    return proxy_class(cls)(cls, workers, group, mesh, execute, lazy, label)


# ---------------------------------------------------------------- construction
