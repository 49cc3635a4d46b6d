"""Scheduler test fixtures: the shared ones from scheduler.testing, plus a few local helpers."""

from __future__ import annotations

from scheduler.testing.fixtures import scheduler_db_url, scheduler_env, scheduler_overrides  # noqa: F401
