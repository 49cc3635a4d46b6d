"""The driver's queue of remote calls: batching consecutive lazy calls, and keeping track of unread results.

Consecutive lazy calls on one proxy are sent as one Ray task per worker (``TwinkleWorker.run_batch``) while that
proxy's workers are still busy with earlier calls: a training loop that runs ahead of its workers then costs a Ray
call per worker every few steps instead of one per method call. The queue is sent before anything waits on it or
could depend on it (see :mod:`._proxy`), after ``TWINKLE_RAY_MAX_BATCH`` (default 16) queued calls, and at once
whenever the workers are idle. In a batch, a call that fails stops the calls queued after it on that worker (they
fail with a "was not run" error that names the failure, which is the one reported).

Unread lazy calls are polled cheaply; a failed one is raised by the next call on any proxy, and by the end of the
script (exit status 1). At most ``TWINKLE_RAY_MAX_PENDING`` (default 32) unread calls run ahead of the driver.

There is one queue per driver process (:data:`CALLS`): Ray keeps the order of calls per caller, and the queue
must see every proxy's calls to keep that order across proxies.
"""

from __future__ import annotations

import atexit
import collections
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, NamedTuple

from twinkle.infra.ray._results import get_fail_fast

if TYPE_CHECKING:
    from twinkle.infra.ray._lazy import LazyResult


class QueuedCall(NamedTuple):
    """A lazy call not sent yet: its method, the per-worker ``(args, kwargs)``, its future, and whether every
    worker gets the same arguments (then they are put in the object store once)."""

    name: str
    calls: list[tuple[tuple, dict]]
    lazy: LazyResult
    shared: bool


def is_not_run(exc: BaseException | None) -> bool:
    """Whether a call failed only because an earlier call in its batch failed."""
    return getattr(exc, "remote_type", "") == "NotRun"


class CallQueue:
    """Calls waiting to be sent (all on one proxy and one set of its workers) and calls sent but not read."""

    # Polling the unread calls costs the driver a Ray round trip; doing it at most this often keeps a fast loop
    # cheap while a failure still surfaces within a step or two.
    POLL_INTERVAL_S = 0.05

    def __init__(self, max_pending: int = 32, max_batch: int = 16) -> None:
        self.max_pending = max_pending
        self.max_batch = max(1, max_batch)
        self.queue: list[QueuedCall] = []
        self.owner: tuple[Any, int] | None = None  # (proxy, number of its workers the queued calls go to)
        self.pending: collections.deque[LazyResult] = collections.deque()
        self._last_poll = 0.0
        self._exit_hook_installed = False

    @classmethod
    def from_environment(cls) -> CallQueue:
        return cls(
            max_pending=int(os.environ.get("TWINKLE_RAY_MAX_PENDING", "32")),
            max_batch=int(os.environ.get("TWINKLE_RAY_MAX_BATCH", "16")),
        )

    # ---------------------------------------------------------------- sending

    def enqueue(self, proxy: Any, n_workers: int, call: QueuedCall, lazy_mode: bool) -> None:
        """Queue a call on ``proxy``'s first ``n_workers`` workers; send the queue when it must not wait longer."""
        if self.queue and self.owner is not None and (self.owner[0] is not proxy or self.owner[1] != n_workers):
            self.flush()
        self.owner = (proxy, n_workers)
        self.queue.append(call)
        if lazy_mode and (len(self.queue) >= self.max_batch or not proxy._busy()):
            self.flush()
        if lazy_mode:
            self.pending.append(call.lazy)

    def flush(self) -> None:
        """Send the queued calls: one Ray task per worker (``run_batch``), or a plain ``call`` for a single one."""
        if not self.queue:
            return
        queued, owner = self.queue, self.owner
        assert owner is not None
        proxy, n_workers = owner
        self.queue, self.owner = [], None
        try:
            self._send(queued, proxy._workers[:n_workers])
        except BaseException as exc:  # the calls never left: each of them fails with the reason
            for call in queued:
                if call.lazy._refs is None:
                    call.lazy._refs, call.lazy._state, call.lazy._error = [], "failed", exc
            raise
        object.__setattr__(proxy, "_in_flight", queued[-1].lazy._refs)

    @staticmethod
    def _send(queued: list[QueuedCall], workers: list[Any]) -> None:
        if len(queued) == 1:
            import ray

            name, calls, lazy, shared = queued[0]
            if shared:
                packed = ray.put(calls[0])  # one copy in the object store instead of one per worker
                lazy._refs = [w.call_packed.remote(name, packed) for w in workers]
            else:
                lazy._refs = [w.call.remote(name, a, k) for w, (a, k) in zip(workers, calls, strict=True)]
            return
        per_worker = []
        for i, worker in enumerate(workers):
            items = [(call.name, call.calls[i][0], call.calls[i][1]) for call in queued]
            per_worker.append(worker.run_batch.options(num_returns=len(items)).remote(items))
        for j, call in enumerate(queued):
            call.lazy._refs = [refs[j] for refs in per_worker]

    # ---------------------------------------------------------------- unread results

    def settle_many(self, lazies: list[LazyResult]) -> None:
        """Settle several calls with one wait and one ``ray.get``; after a failure, one by one, so that each call
        keeps its own error."""
        lazies = [lazy for lazy in lazies if lazy._state == "pending"]
        if len(lazies) > 1:
            if any(lazy._refs is None for lazy in lazies):
                self.flush()
            refs = [ref for lazy in lazies for ref in lazy._refs or []]
            try:
                values = get_fail_fast(refs, lazies[0]._label)
            except Exception:  # noqa: BLE001 - sorted out call by call below
                pass
            else:
                start = 0
                for lazy in lazies:
                    n = len(lazy._refs or [])
                    mine = values[start:start + n]
                    start += n
                    lazy._value, lazy._state, lazy._refs = [mine[r] for r in lazy._ranks], "fetched", []
                return
        for lazy in lazies:
            lazy._settle()

    def drain(self, block: bool = False) -> None:
        """Settle the unread calls that have finished; raise the first failure among them."""
        import ray

        pending = self.pending
        while pending and pending[0]._state != "pending":
            pending.popleft()
        if not pending:
            return
        if len(pending) > self.max_pending:  # calls read out of order leave settled ones behind the head: drop them
            still_pending = [lazy for lazy in pending if lazy._state == "pending"]
            pending.clear()
            pending.extend(still_pending)
        if block or len(pending) > self.max_pending:
            # with batching, wait down to half the window so that the calls made meanwhile can share a Ray task
            keep = 0 if block else (self.max_pending if self.max_batch == 1 else self.max_pending // 2)
            self.flush()
            settled = [pending.popleft() for _ in range(len(pending) - keep)]
            self.settle_many(settled)
            for lazy in settled:
                if lazy._state == "failed" and not is_not_run(lazy._error):
                    assert lazy._error is not None
                    raise lazy._error
            return
        now = time.monotonic()
        if now - self._last_poll < self.POLL_INTERVAL_S:
            return
        self._last_poll = now
        refs = [ref for lazy in pending if lazy._refs is not None for ref in lazy._refs]
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        ready_set = set(ready)
        still: list[LazyResult] = []
        finished: list[LazyResult] = []
        for lazy in pending:
            if lazy._state == "pending" and lazy._refs is not None and all(ref in ready_set for ref in lazy._refs):
                finished.append(lazy)
            elif lazy._state == "pending":
                still.append(lazy)
        pending.clear()
        pending.extend(still)
        self.settle_many(finished)
        first_error: BaseException | None = None
        for lazy in finished:
            # a call skipped after a failure is not reported, the failure itself is
            if lazy._state == "failed" and not is_not_run(lazy._error):
                first_error = first_error or lazy._error
        if first_error is not None:
            raise first_error

    # ---------------------------------------------------------------- the end of the script

    def drain_at_exit(self) -> None:
        """At the end of the script, wait for the unread calls; a failure among them makes the exit status 1."""
        import ray

        if not ray.is_initialized():
            return  # Ray was shut down first: the calls went with it, and waiting would start a new cluster
        try:
            self.drain(block=True)
        except BaseException:  # noqa: BLE001
            sys.stderr.write("twinkle: a remote call failed and its result was never read:\n")
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                ray.shutdown()
            finally:
                os._exit(1)

    def install_exit_hook(self) -> None:
        # Registered after ray.init (which registers ray.shutdown), so it runs first: the workers are still alive.
        if not self._exit_hook_installed:
            atexit.register(self.drain_at_exit)
            self._exit_hook_installed = True


CALLS = CallQueue.from_environment()
