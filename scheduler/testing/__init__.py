"""Helpers other test folders can import: settings for a temp dir, an app factory, user/worker factories,
and ``InProcessWorker``, a small worker speaking the same HTTP API as ``twinkle-worker`` (for tests of
scheduler logic that need a worker but not a job process; end-to-end tests run the real daemon).

Pytest fixtures live in ``scheduler.testing.fixtures``; load them with
``pytest_plugins = ["scheduler.testing.fixtures"]`` in a conftest.
"""

from scheduler.testing.factories import (
    InProcessWorker,
    auth,
    create_user,
    create_worker_token,
    make_app,
    make_settings,
    reset_database,
    submit_script,
)

__all__ = [
    "InProcessWorker",
    "auth",
    "create_user",
    "create_worker_token",
    "make_app",
    "make_settings",
    "reset_database",
    "submit_script",
]
