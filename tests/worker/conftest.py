"""Worker test fixtures: ``platform`` runs the real API and dispatcher as processes (local storage, SQLite, a
real Redis db) and starts real ``twinkle-worker`` daemons, reusing the integration tests' ``Stack``."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import free_port, wait_for_port


@pytest.fixture()
def platform(tmp_path, redis_server_url):
    """API + dispatcher on a fresh SQLite database; no S3 (the worker tests do not look at stored files).

    Redis db 13 is this fixture's own: scheduler tests running at the same time flush db 9 (``redis_url``), which
    would drop the broker's queues under a running daemon."""
    import redis

    from tests.integration.conftest import BIN, Stack, scheduler_env  # skips when the console scripts are missing

    redis_url = redis_server_url.rstrip("/") + "/13"
    redis.Redis.from_url(redis_url).flushdb()
    admin_token = "admin-" + uuid.uuid4().hex
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'twinkle.db'}"
    no_s3 = dict.fromkeys(("endpoint_url", "bucket", "region", "access_key_id", "secret_access_key"), "")
    env = scheduler_env(tmp_path, database_url, redis_url, no_s3, admin_token, port)
    for key in [k for k in env if k.startswith("TWINKLE_SCHEDULER_S3_")]:
        del env[key]  # the local storage backend under tmp_path
    stack = Stack(tmp_path, f"http://127.0.0.1:{port}", admin_token, redis_url, database_url, {})
    try:
        api = stack._spawn("api", [str(BIN / "twinkle-scheduler"), "serve"], env)
        wait_for_port("127.0.0.1", port, timeout=60)
        assert api.alive(), api.log()
        stack._spawn("dispatcher", [str(BIN / "twinkle-scheduler"), "dispatch"], env)
        yield stack
    finally:
        stack.close()
