"""Scheduler settings: one pydantic-settings object read from ``TWINKLE_SCHEDULER_*`` variables.

The names are pinned in ``docs/architecture.md``; Helm renders its values to these variables.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "changethis"


class Settings(BaseSettings):
    """Configuration of the API, the dispatcher and ``twinkle-scheduler up``.

    Args:
        database_url: SQLAlchemy URL; SQLite is the embedded default, PostgreSQL the production database.
        redis_url: broker and log streams. ``REDIS_URL`` is honoured too. Unset: ``redis://127.0.0.1:6379/0``,
            except under ``up``, which starts an embedded Redis instead.
        secret_key: signs session cookies and local download links; refused as ``changethis`` in production.
        admin_token: bootstraps users and worker tokens over HTTP (``POST /users``, ``POST /worker-tokens``).
        public_url: base URL that local-storage download links use; unset: the URL of the request.
        broker_public_url: the Redis URL handed to workers at registration (unset: ``redis_url``).
        storage_dir: the local storage folder, used unless ``s3_bucket`` is set.
        max_bundle_mb: largest accepted script bundle.
        heartbeat_interval_s / lease_s: a worker that has not heartbeated for ``lease_s`` is lost.
        start_deadline_s: an assignment not confirmed by ``start`` within this is dispatched again.
        dispatch_interval_s: pause between matcher/reaper rounds of ``twinkle-scheduler dispatch``.
        max_attempts: a job requeued this many times (lost workers, missed starts) fails instead.
        download_ttl_s: lifetime of presigned download links.
        environment: ``development`` allows the default secret; ``production`` refuses it.
    """

    model_config = SettingsConfigDict(env_prefix="TWINKLE_SCHEDULER_", extra="ignore", case_sensitive=False)

    database_url: str = "sqlite:///./.twinkle/twinkle.db"
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TWINKLE_SCHEDULER_REDIS_URL", "REDIS_URL", "redis_url")
    )
    secret_key: str = DEFAULT_SECRET
    admin_token: str | None = None
    public_url: str | None = None
    broker_public_url: str | None = None
    storage_dir: Path = Path("./.twinkle/storage")
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    max_bundle_mb: float = Field(default=100.0, gt=0)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    start_deadline_s: float = Field(default=120.0, gt=0)
    dispatch_interval_s: float = Field(default=1.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    download_ttl_s: int = Field(default=3600, gt=0)
    host: str = "127.0.0.1"
    port: int = 8000
    environment: Literal["development", "production"] = "development"
    run_migrations: bool = True

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.environment != "development" and self.secret_key == DEFAULT_SECRET:
            raise ValueError(
                "TWINKLE_SCHEDULER_SECRET_KEY is 'changethis'; set a long random value "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))') outside development"
            )
        if self.lease_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"TWINKLE_SCHEDULER_LEASE_S ({self.lease_s}) must exceed HEARTBEAT_INTERVAL_S "
                f"({self.heartbeat_interval_s}), or every worker is lost between two heartbeats"
            )
        return self

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def max_bundle_bytes(self) -> int:
        return int(self.max_bundle_mb * 1024 * 1024)


@lru_cache
def get_settings() -> Settings:
    return Settings()
