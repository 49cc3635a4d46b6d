"""One compute worker per model or sampler (http.md §3.5): one task at a time, round-robin over per-key queues.

Key ``model:<adapter>`` for calls on an adapter, ``token:<tenant>`` otherwise. So an adapter's calls run in
arrival order, and a tenant who queues many calls does not starve the others: the worker takes one task from each
waiting key in turn. Everything on the base model is serialised, which is what makes the shared weights safe.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from twinkle.server.errors import http_status
from twinkle.server.state import FutureStore
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.server")

__all__ = ["ComputeQueue"]


class ComputeQueue:
    def __init__(self, name: str, futures: FutureStore, queue_timeout: float = 300) -> None:
        self.name = name
        self.futures = futures
        self.queue_timeout = queue_timeout
        self._queues: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"twinkle-compute-{name}", daemon=True)
        self._thread.start()

    def submit(self, key: str, tenant: str, fn: Callable[[], Any], model_id: str | None = None):
        """Queue ``fn``; returns ``(request_id, concurrent future)``. The future record tracks it too."""
        request_id = self.futures.create(tenant, model_id)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._queues.setdefault(key, collections.deque()).append((request_id, fn, future, time.monotonic()))
            self.futures.update(request_id, status="queued")
            self._cond.notify()
        return request_id, future

    def _next(self):
        with self._cond:
            while not self._stopped and not self._queues:
                self._cond.wait()
            if self._stopped:
                return None
            key, queue = self._queues.popitem(last=False)
            task = queue.popleft()
            if queue:
                self._queues[key] = queue  # to the back: the next key goes first
            return task

    def _loop(self) -> None:
        while True:
            task = self._next()
            if task is None:
                return
            request_id, fn, future, queued_at = task
            if not future.set_running_or_notify_cancel():
                continue
            waited = time.monotonic() - queued_at
            if self.queue_timeout and waited > self.queue_timeout:
                exc = TimeoutError(f"Queue timeout exceeded: waited {waited:.1f}s; retry later")
                self.futures.update(request_id, status="failed", error=str(exc), category="server",
                                    queue_state="paused_capacity")
                future.set_exception(exc)
                continue
            self.futures.update(request_id, status="running")
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - a task's error belongs to its caller, never the worker
                status = http_status(exc)
                if status >= 500:
                    logger.error("task %s on %s failed:\n%s", request_id, self.name, traceback.format_exc())
                self.futures.update(request_id, status="failed", error=str(exc),
                                    category="user" if status < 500 else "server", http_status=status)
                future.set_exception(exc)
            else:
                self.futures.update(request_id, status="completed", result=result)
                future.set_result(result)

    def pending(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
