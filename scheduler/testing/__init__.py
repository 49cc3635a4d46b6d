"""Helpers other test folders can import: settings for a temp dir, an app factory, user/worker factories,
and ``InProcessWorker``, a small worker speaking the same HTTP API as ``twinkle-worker`` (for tests of
scheduler logic that need a worker but not a job process; end-to-end tests run the real daemon).

``Stack`` (``scheduler.testing.stack``) runs the whole platform as real child processes (API, dispatcher,
``twinkle-worker`` daemons, a Redis of one's own) for end-to-end tests, the web UI tests and the benchmarks.

Pytest fixtures live in ``scheduler.testing.fixtures``; load them with
``pytest_plugins = ["scheduler.testing.fixtures"]`` in a conftest.
"""

from scheduler.testing.factories import (
    InProcessWorker,
    auth,
    create_user,
    create_worker_token,
    dispatch_once,
    job_view,
    make_app,
    make_settings,
    real_executor,
    reset_database,
    submit_script,
    workers_by_name,
)
from scheduler.testing.net import free_port, serving, wait_for, wait_for_port
from scheduler.testing.stack import Service, Stack, redis_url_of, running_stack, start_redis

__all__ = [
    "InProcessWorker",
    "Service",
    "Stack",
    "auth",
    "create_user",
    "create_worker_token",
    "dispatch_once",
    "free_port",
    "job_view",
    "make_app",
    "make_settings",
    "real_executor",
    "redis_url_of",
    "reset_database",
    "running_stack",
    "serving",
    "start_redis",
    "submit_script",
    "wait_for",
    "wait_for_port",
    "workers_by_name",
]
