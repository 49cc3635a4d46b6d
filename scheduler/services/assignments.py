"""How an assignment reaches its worker: the dispatcher commits it, pokes the worker's wake-up key in Redis, and
the API's claim route (a long poll the worker holds open) hands it out.

Redis and the database stay inside the platform: a worker holds only its worker token and speaks HTTP(S) to the
API (``POST /workers/{id}/claim?wait=20``). The poke only shortens the wait; the database is the source of truth,
so a lost poke (Redis restarted, the dispatcher crashed after its commit) costs at most ``POLL_S`` of latency,
and an assignment nobody started is dispatched again after ``START_DEADLINE_S``.

A pooled worker holds one claim per device it may run side by side. So that two of them never get the same
assignment, the claim route reserves what it hands out for ``CLAIM_HOLD_S`` (``SET NX``): the other claims get
the next one, or wait. ``start`` stays the fence: Redis down, the reservation is skipped and a second start
answers 409, which the worker takes quietly. A claim whose answer was lost gets its assignment again once the
hold expires (well within ``START_DEADLINE_S``).

Redis keys: ``twinkle:wake:{worker_id}``, a List holding at most one element, expiring after ``WAKE_TTL_S``;
``twinkle:claimed:{job_id}:{attempt}``, a reservation expiring after ``CLAIM_HOLD_S``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)
T = TypeVar("T")

WAKE_TTL_S = 60
POLL_S = 5.0
"""A waiting claim looks at the database at least this often, poke or not."""
CLAIM_HOLD_S = 10
"""How long an assignment handed to one claim is not handed to another (the worker starts it within ms)."""


def wake_key(worker_id: str) -> str:
    return f"twinkle:wake:{worker_id}"


def claimed_key(job_id: str, attempt: int) -> str:
    return f"twinkle:claimed:{job_id}:{attempt}"


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


CLIENT_NAME = "twinkle-api-waker"  # how the waker's connections show in Redis' CLIENT LIST


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
                self.redis_url, socket_connect_timeout=2, socket_timeout=POLL_S + 5, client_name=CLIENT_NAME
            )
        return client

    async def aclose(self) -> None:
        """Close the running loop's client and its connections (the API's shutdown): one per claim that waited
        at once, which would otherwise stay open on Redis until the process is gone."""
        client = self._clients.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.aclose()

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

    async def poke(self, worker_id: str) -> None:
        """Wake another waiting claim of this worker (there are more assignments than the one just handed out)."""
        try:
            key = wake_key(worker_id)
            await self._client().pipeline(transaction=False).rpush(key, "1").ltrim(key, -1, -1).expire(
                key, WAKE_TTL_S
            ).execute()
        except (redis.RedisError, OSError) as exc:
            log.debug("re-poke failed (%s); the other claims poll", exc)

    async def reserve(self, candidates: list[T], key: Any) -> T | None:
        """The first of ``candidates`` no other claim holds, now held for ``CLAIM_HOLD_S``; ``key(c)`` is its
        ``(job_id, attempt)``. Redis down: the first candidate (``start`` is the fence)."""
        try:
            client = self._client()
            for c in candidates:
                if await client.set(claimed_key(*key(c)), "1", nx=True, ex=CLAIM_HOLD_S):
                    return c
            return None
        except (redis.RedisError, OSError) as exc:
            log.debug("claim reservation failed (%s); handing out unreserved", exc)
            return candidates[0] if candidates else None
