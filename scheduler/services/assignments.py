"""How an assignment reaches its worker: the dispatcher commits it, pokes the worker's wake-up key in Redis, and
the API's claim route (a long poll the worker holds open) hands it out.

Redis and the database stay inside the platform: a worker holds only its worker token and speaks HTTP(S) to the
API (``POST /workers/{id}/claim?wait=20``). The poke only shortens the wait; the database is the source of truth,
so a lost poke (Redis restarted, the dispatcher crashed after its commit) costs at most ``POLL_S`` of latency,
and an assignment nobody started is dispatched again after ``START_DEADLINE_S``.

Redis key: ``twinkle:wake:{worker_id}``, a List holding at most one element, expiring after ``WAKE_TTL_S``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)

WAKE_TTL_S = 60
POLL_S = 5.0
"""A waiting claim looks at the database at least this often, poke or not."""


def wake_key(worker_id: str) -> str:
    return f"twinkle:wake:{worker_id}"


def wake(r: redis.Redis | None, worker_ids: Iterable[str]) -> None:
    """Poke each worker's waiting claim (after the assignments are committed). Never raises: a lost poke only
    delays the claim until its next look at the database."""
    ids = sorted(set(worker_ids))
    if r is None or not ids:
        return
    try:
        pipe = r.pipeline(transaction=False)
        for wid in ids:
            key = wake_key(wid)
            pipe.rpush(key, "1")
            pipe.ltrim(key, -1, -1)
            pipe.expire(key, WAKE_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not wake %d worker(s) (%s); their claims find the assignments by polling", len(ids), exc)


class Waker:
    """The API side: wait up to ``timeout_s`` for a poke (``BLPOP``) on an asyncio Redis client of the running
    loop, so a waiting claim holds no thread and no database connection. Redis down: just sleep."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self._clients: dict[int, Any] = {}

    def _client(self) -> Any:
        key = id(asyncio.get_running_loop())
        client = self._clients.get(key)
        if client is None:
            # socket_timeout above the longest block, so a BLPOP is never cut short by its own client
            client = self._clients[key] = aioredis.Redis.from_url(
                self.redis_url, socket_connect_timeout=2, socket_timeout=POLL_S + 5
            )
        return client

    async def wait(self, worker_id: str, timeout_s: float) -> bool:
        """True when poked; False after ``timeout_s`` (or when Redis failed: then after sleeping it out)."""
        if timeout_s <= 0:
            return False
        try:
            got = await self._client().blpop([wake_key(worker_id)], timeout=max(0.01, timeout_s))
            return got is not None
        except (redis.RedisError, OSError) as exc:
            log.debug("wake-up wait failed (%s); sleeping instead", exc)
            await asyncio.sleep(timeout_s)
            return False
