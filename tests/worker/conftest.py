"""Worker test fixtures: ``platform`` runs the real API and dispatcher as processes (local storage, SQLite, a
real Redis db) and starts real ``twinkle-worker`` daemons (``scheduler.testing.Stack``)."""

from __future__ import annotations

import pytest

from scheduler.testing.fixtures import scheduler_db_url, scheduler_env, scheduler_overrides  # noqa: F401


@pytest.fixture()
def platform(tmp_path, redis_server_url):
    """API + dispatcher on a fresh SQLite database; no S3 (the worker tests do not look at stored files).

    Redis db 13 is this fixture's own: scheduler tests running at the same time flush db 9 (``redis_url``), which
    would drop the wake-up keys and claim holds under a running daemon."""
    import redis

    from scheduler.testing.stack import running_stack

    redis_url = redis_server_url.rstrip("/") + "/13"
    redis.Redis.from_url(redis_url).flushdb()
    with running_stack(tmp_path, redis_url=redis_url) as stack:
        yield stack
