"""The Ray actor that hosts one rank of a component.

The actor sets the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, ...), runs
``twinkle.initialize(mode='local', ...)`` with the component's mesh, and builds the component exactly as a torchrun
rank would: the same constructor, the same mesh injection, the same ``torch.distributed`` group (gloo on the CPU,
nccl on CUDA). Every exception leaves the actor as a :class:`RemoteCallError` naming the method and the rank.
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import traceback
from typing import Any

from twinkle.infra.ray._errors import RemoteCallError
from twinkle.infra.ray._serialization import register_tensor_serializer

__all__ = ["CallFailed", "TwinkleWorker"]


class CallFailed:
    """One failed call of a :meth:`TwinkleWorker.run_batch`: its place in the results holds the error instead."""

    __slots__ = ("error",)

    def __init__(self, error: RemoteCallError) -> None:
        self.error = error

    def __reduce__(self):
        return (CallFailed, (self.error,))


class TwinkleWorker:
    """One rank of one component (wrapped with ``ray.remote`` by the proxy)."""

    def __init__(self, label: str, rank: int) -> None:
        self._label = label
        self._rank = rank
        self._obj: Any = None
        self._iters: dict[int, Any] = {}
        self._iter_ids = itertools.count()
        os.environ["TWINKLE_RAY_WORKER"] = "1"
        register_tensor_serializer()  # the tensors this actor returns travel as arrays

    # ---------------------------------------------------------------- set-up

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port on it, for MASTER_ADDR/MASTER_PORT when this is rank 0."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ip, port

    def build(
        self, env: dict[str, str], init_kwargs: dict[str, Any], cls: type, args: tuple, kwargs: dict, cwd: str = ""
    ) -> str:
        """Set the rank's environment, initialise twinkle locally, construct the component; returns the pid.

        ``env`` holds the torchrun variables plus the driver's job settings (TWINKLE_*, HF_*, ...); ``cwd`` is the
        driver's working directory, entered when it exists on this node, so relative paths (``output/``) mean the
        same thing in every rank as in the script.
        """
        try:
            os.environ.update(env)
            if cwd and os.path.isdir(cwd):
                os.chdir(cwd)
            if "OMP_NUM_THREADS" in env:
                # torch read the variable when it was imported; apply the driver's value the way torchrun would
                import torch

                torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
            from twinkle.infra import _state
            from twinkle.infra._initialize import initialize

            _state.mark_worker()
            initialize(mode="local", **init_kwargs)
            self._obj = cls(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the driver, wrapped
            raise self._wrap("__init__", exc) from None
        return f"{os.getpid()}"

    # ---------------------------------------------------------------- calls

    def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        try:
            return getattr(self._obj, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(method, exc) from None

    def call_packed(self, method: str, packed: tuple[tuple, dict]) -> Any:
        """``call`` with the arguments shared through one object-store copy (dispatch='all')."""
        args, kwargs = packed
        return self.call(method, args, kwargs)

    def run_batch(self, calls: list[tuple[str, tuple, dict]]) -> Any:
        """Several queued calls in one Ray task, in order; one result per call (the task has ``len(calls)`` returns).

        A call that raises leaves a :class:`CallFailed` in its place, and the calls after it are not run (they get a
        ``CallFailed`` saying so): its peers may be stuck in a collective, and returning now lets the driver report
        the first error at once.
        """
        results: list[Any] = []
        for i, (method, args, kwargs) in enumerate(calls):
            try:
                results.append(getattr(self._obj, method)(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - handed back in the call's place
                first = self._wrap(method, exc)
                results.append(CallFailed(first))
                for later, _, _ in calls[i + 1:]:
                    skipped = RemoteCallError(
                        f"{self._label}.{later} was not run on rank {self._rank}: {self._label}.{method}, queued "
                        f"before it, failed: {type(exc).__name__}: {exc}",
                        method=f"{self._label}.{later}", rank=self._rank, remote_type="NotRun")
                    skipped.cause = first
                    results.append(CallFailed(skipped))
                break
        return results[0] if len(results) == 1 else results

    def get_attr(self, name: str) -> Any:
        try:
            return getattr(self._obj, name)
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(name, exc) from None

    def getitems(self, indices: list[Any]) -> list[Any]:
        try:
            return [self._obj[i] for i in indices]
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("__getitem__", exc) from None

    # ---------------------------------------------------------------- iteration (a remote DataLoader)

    def iter_start(self) -> int:
        try:
            it = iter(self._obj)
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("__iter__", exc) from None
        key = next(self._iter_ids)
        self._iters[key] = it
        return key

    def iter_next(self, key: int, count: int) -> tuple[list[Any], bool]:
        """Up to ``count`` items and whether the iterator is exhausted."""
        it = self._iters.get(key)
        if it is None:
            return [], True
        items: list[Any] = []
        try:
            for _ in range(count):
                items.append(next(it))
        except StopIteration:
            self._iters.pop(key, None)
            return items, True
        except Exception as exc:  # noqa: BLE001
            self._iters.pop(key, None)
            raise self._wrap("__next__", exc) from None
        return items, False

    def iter_close(self, key: int) -> None:
        self._iters.pop(key, None)

    # ---------------------------------------------------------------- errors

    def _wrap(self, method: str, exc: BaseException) -> RemoteCallError:
        tb = traceback.format_exc()
        err = RemoteCallError(
            f"{self._label}.{method} failed on rank {self._rank} (pid {os.getpid()}): "
            f"{type(exc).__name__}: {exc}\n--- traceback in the Ray worker ---\n{tb}",
            method=f"{self._label}.{method}",
            rank=self._rank,
            remote_type=type(exc).__name__,
            remote_traceback=tb,
        )
        try:
            pickle.dumps(exc)
            err.cause = exc
        except Exception:  # noqa: BLE001 - an exception that cannot travel stays described by its text
            err.cause = None
        return err
