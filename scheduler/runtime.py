"""The long-lived parts one process shares: settings, database, storage, Redis, the claims' waker.

Blocking work of the API (SQLAlchemy, storage, Redis) runs in threads through ``run`` / ``in_session``, in
one of two lanes, each with its own thread limit and connection pool: ``user`` (submissions, listings, the
web UI) and ``worker`` (heartbeats and attempt writes). A session lives inside one thread call and is closed
there, so no connection is ever held across an ``await`` or while waiting for a thread, and a flood of users
cannot delay a heartbeat into a lost lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import redis

from scheduler.db.session import Database, migrate
from scheduler.settings import Settings
from scheduler.storage import Storage, make_storage

T = TypeVar("T")
Lane = Literal["user", "worker"]


def redis_client(url: str) -> redis.Redis:
    """The synchronous Redis client of the API and the dispatcher. Socket timeouts: while Redis is down, or
    accepts connections and never answers (a paused server, a black-holed network), a call fails in seconds
    (the API answers 503 + Retry-After; the dispatcher's wake-up poke is skipped) instead of tying up a thread,
    or the dispatcher's whole loop, matcher and reaper alike, forever. Explicit: redis-py before 6 has none by
    default (``redis>=5`` is allowed)."""
    return redis.Redis.from_url(
        url, decode_responses=True, health_check_interval=30, socket_connect_timeout=2, socket_timeout=10
    )


@dataclass
class Runtime:
    settings: Settings
    db: Database
    storage: Storage
    _limiters: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, run_migrations: bool | None = None) -> Runtime:
        if settings.run_migrations if run_migrations is None else run_migrations:
            migrate(settings.database_url)
        db = Database(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
        )
        return cls(settings=settings, db=db, storage=make_storage(settings))

    @cached_property
    def worker_db(self) -> Database:
        """The worker lane's own pool on the same database (heartbeats never queue behind user requests)."""
        s = self.settings
        return Database(s.database_url, pool_size=s.worker_lane_pool, max_overflow=0, pool_timeout=s.db_pool_timeout_s)

    def db_for(self, lane: Lane) -> Database:
        return self.worker_db if lane == "worker" else self.db

    def _limiter(self, lane: Lane) -> Any:
        # anyio limiters belong to one event loop (tests run several); one per loop and lane
        import asyncio

        key = (id(asyncio.get_running_loop()), lane)
        lim = self._limiters.get(key)
        if lim is None:
            total = self.settings.worker_lane_threads if lane == "worker" else self.settings.api_threads
            lim = self._limiters[key] = anyio.CapacityLimiter(total)
        return lim

    async def run(self, fn: Callable[..., T], *args: Any, lane: Lane = "user") -> T:
        """Run blocking ``fn(*args)`` in a thread of ``lane``."""
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=self._limiter(lane))

    async def in_session(self, fn: Callable[..., T], *args: Any, lane: Lane = "user", readonly: bool = False) -> T:
        """Run ``fn(session, *args)`` in a thread of ``lane`` with a session opened and closed in that thread;
        ``readonly`` for work that only reads (``Database.session``: no transaction round trips)."""
        db = self.db_for(lane)

        def call() -> T:
            with db.session(readonly) as session:
                return fn(session, *args)

        return await anyio.to_thread.run_sync(call, limiter=self._limiter(lane))

    @property
    def redis_url(self) -> str:
        return self.settings.effective_redis_url

    @cached_property
    def redis(self) -> redis.Redis:
        return redis_client(self.redis_url)

    @cached_property
    def waker(self) -> Any:
        """Where a waiting claim waits for the dispatcher's poke (``scheduler.services.assignments.Waker``)."""
        from scheduler.services.assignments import Waker

        return Waker(self.redis_url)

    def close(self) -> None:
        if "redis" in self.__dict__:
            self.redis.close()
        if "worker_db" in self.__dict__:
            self.worker_db.dispose()
        self.db.dispose()
