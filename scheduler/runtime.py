"""The long-lived parts one process shares: settings, database, storage, Redis, the Celery app."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis

from scheduler.db.session import Database, migrate
from scheduler.settings import Settings
from scheduler.storage import Storage, make_storage


@dataclass
class Runtime:
    settings: Settings
    db: Database
    storage: Storage

    @classmethod
    def from_settings(cls, settings: Settings, *, run_migrations: bool | None = None) -> Runtime:
        if settings.run_migrations if run_migrations is None else run_migrations:
            migrate(settings.database_url)
        return cls(settings=settings, db=Database(settings.database_url), storage=make_storage(settings))

    @property
    def redis_url(self) -> str:
        return self.settings.effective_redis_url

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True, health_check_interval=30)

    @cached_property
    def celery(self) -> Any:
        from scheduler.tasks.celery_app import make_celery

        return make_celery(self.redis_url)

    def close(self) -> None:
        if "redis" in self.__dict__:
            self.redis.close()
        self.db.dispose()
