"""Scheduler settings: one pydantic-settings object read from ``TWINKLE_SCHEDULER_*`` variables.

The names are pinned in ``docs/architecture.md``; Helm renders its values to these variables.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.archive import ArchiveLimits

DEFAULT_SECRET = "changethis"


class Settings(BaseSettings):
    """Configuration of the API, the dispatcher and ``twinkle-scheduler up``.

    Args:
        database_url: SQLAlchemy URL; SQLite is the embedded default, PostgreSQL the production database.
        redis_url: log streams and assignment wake-ups; only the API and the dispatcher reach it (never a
            worker). ``REDIS_URL`` is honoured too. Unset: ``redis://127.0.0.1:6379/0``,
            except under ``up``, which starts an embedded Redis instead.
        secret_key: signs session cookies and local download links; refused as ``changethis`` in production.
        admin_token: bootstraps users and worker tokens over HTTP (``POST /users``, ``POST /worker-tokens``).
        metrics_token: when set, ``GET /metrics`` needs ``Authorization: Bearer <metrics_token>`` (Prometheus'
            ``authorization`` setting); unset, it is open, as a scrape target inside a cluster usually is.
        public_url: base URL that local-storage download links use; unset: the URL of the request.
        storage_dir: the local storage folder, used unless ``s3_bucket`` is set.
        max_bundle_mb: largest accepted script bundle.
        max_unpacked_mb / max_bundle_files / max_bundle_file_mb / max_compression_ratio: what a zip bundle may
            inflate to (``contract.archive``); refused at submit with a 422 naming the rule.
        db_pool_size / db_max_overflow / db_pool_timeout_s: the API's connection pool for user requests. Keep
            ``db_pool_size + db_max_overflow`` at or above ``api_threads``: a thread then never waits for a
            connection, and a request that still cannot get one in time is answered 503 with Retry-After. Keep
            ``db_pool_size`` at ``api_threads`` too: an overflow connection is closed when it comes back, so a
            pool smaller than the threads opens and closes PostgreSQL connections all through a busy minute
            (bench/api_load.py: a third of the database's CPU at 1,000 clients).
        api_threads: threads that run the API's blocking work (SQLAlchemy, storage) for user requests.
        worker_lane_threads / worker_lane_pool: a separate thread limit and connection pool for worker calls
            (heartbeats, attempt writes), so no user load can delay a heartbeat into a lost lease.
        api_workers: processes of ``twinkle-scheduler serve`` (uvicorn workers) sharing the port; each has
            its own pools, so the database must allow ``api_workers * (db_pool_size + db_max_overflow +
            worker_lane_pool)`` connections.
        auth_cache_s: how long the API remembers a checked token (0: look it up on every request).
        api_url: where the dispatcher probes the API (``/readyz``) before it lets a lease expire; unset:
            ``http://HOST:PORT``.
        heartbeat_interval_s / lease_s: a worker that has not heartbeated for ``lease_s`` is lost.
        start_deadline_s: an assignment not confirmed by ``start`` within this is dispatched again.
        dispatch_interval_s: pause between matcher/reaper rounds of ``twinkle-scheduler dispatch``.
        max_attempts: a job requeued this many times (lost workers, missed starts) fails instead.
        download_ttl_s: lifetime of presigned download links.
        environment: ``development`` allows the default secret; ``production`` refuses it.
        max_ranks_per_worker: the most ranks one worker may offer over all its groups (a registration over it is
            422 ``too_many_ranks``), whatever its probe says.
        replay_fraction: the share of donors' succeeded attempts replayed on a trusted worker (0..1), drawn after
            the attempt ended, so a donor cannot tell a sampled attempt from another.
        replay_first_n: every succeeded attempt of a donor is replayed until it has this many validated ones.
        replay_steps: optimizer steps a replay runs (``TWINKLE_STOP_AFTER_STEPS``) and compares.
        replay_wait_s: a replay no trusted worker has taken within this is cancelled and the checked job succeeds
            unvalidated (its donor earns no credit from it), so its owner never waits on a pool that is down.
        replay_rtol_cpu / replay_rtol_gpu: relative tolerance on per-step loss and grad norm (CPU training is
            deterministic; GPU kernels differ between devices).
        min_reputation: a donor below this reputation gets no jobs.
        trusted_reputation / trusted_min_validated: a donor at or above this reputation with this many validated
            attempts may run replays too (besides trusted pools).
        canary_required: a new donor's worker (its token not trusted, no passed canary for its token and name) runs
            a known-answer canary (a tiny training whose loss curve the platform computes itself) before it gets
            any user's job; one that fails it gets no jobs. Trusted pools never run one.
        canary_steps: optimizer steps of a canary (each step's loss is compared).
        canary_timeout_s: a canary not finished this long after it was assigned fails its worker's check.
        require_worker_approval: workers of a new worker token get no jobs until an admin approves them
            (``POST /workers/{id}/approve``, ``twinkle-scheduler approve-worker``); unset: on in production.
            Tokens made for a trusted pool (``create-worker-token --pre-approved``) and ``up``'s local worker are
            approved when made.
        claim_wait_s: the longest a worker's claim (``POST /workers/{id}/claim``) waits for an assignment.
        queue_estimate_ttl_s: queue positions and expected starts are computed from a read of the whole queue
            shared by one API process's requests for this long (0: every request reads the queue), so a
            submission or a page costs the same whatever the queue's length; estimates are this much stale.
        max_artifact_mb / max_attempt_artifacts_mb: largest file a worker may upload, and all files of one
            attempt together (413 ``quota_exceeded`` naming the limit, and a line in the job's log).
        max_log_post_kb / max_attempt_log_lines / max_attempt_log_mb: one log post's text, and one attempt's
            lines and text in all; over them a post is 413 and a line in the job's log says so (once).
        max_metrics_per_post / max_attempt_metrics / max_metric_record_kb: metric records per post, per attempt,
            and the JSON size of one record.
        max_json_body_mb: any JSON request body (413 before it is read).
    """

    model_config = SettingsConfigDict(env_prefix="TWINKLE_SCHEDULER_", extra="ignore", case_sensitive=False)

    database_url: str = "sqlite:///./.twinkle/twinkle.db"
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TWINKLE_SCHEDULER_REDIS_URL", "REDIS_URL", "redis_url")
    )
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET)
    admin_token: SecretStr | None = None
    metrics_token: SecretStr | None = None
    public_url: str | None = None
    storage_dir: Path = Path("./.twinkle/storage")
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    max_bundle_mb: float = Field(default=100.0, gt=0)
    max_unpacked_mb: float = Field(default=1024.0, gt=0)
    max_bundle_files: int = Field(default=10_000, ge=1)
    max_bundle_file_mb: float = Field(default=512.0, gt=0)
    max_compression_ratio: float = Field(default=100.0, ge=1)
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_s: float = Field(default=10.0, gt=0)
    api_threads: int = Field(default=20, ge=1)
    worker_lane_threads: int = Field(default=4, ge=1)
    worker_lane_pool: int = Field(default=4, ge=1)
    api_url: str | None = None
    auth_cache_s: float = Field(default=5.0, ge=0)
    api_workers: int = Field(default=1, ge=1)
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
    max_ranks_per_worker: int = Field(default=64, ge=1, le=4096)
    replay_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    replay_first_n: int = Field(default=3, ge=0)
    replay_steps: int = Field(default=3, ge=1, le=1000)
    replay_wait_s: float = Field(default=1800.0, gt=0)
    replay_rtol_cpu: float = Field(default=1e-4, gt=0)
    replay_rtol_gpu: float = Field(default=2e-2, gt=0)
    min_reputation: float = Field(default=0.25, ge=0.0, le=1.0)
    trusted_reputation: float = Field(default=0.9, ge=0.0, le=1.0)
    trusted_min_validated: int = Field(default=20, ge=1)
    canary_required: bool = True
    canary_steps: int = Field(default=8, ge=2, le=100)
    canary_timeout_s: float = Field(default=600.0, gt=0)
    require_worker_approval: bool | None = None
    claim_wait_s: float = Field(default=20.0, gt=0, le=60)
    queue_estimate_ttl_s: float = Field(default=2.0, ge=0, le=60)
    max_artifact_mb: float = Field(default=4096.0, gt=0)
    max_attempt_artifacts_mb: float = Field(default=32768.0, gt=0)
    max_log_post_kb: float = Field(default=1024.0, gt=0)
    max_attempt_log_lines: int = Field(default=1_000_000, ge=1)
    max_attempt_log_mb: float = Field(default=256.0, gt=0)
    max_metrics_per_post: int = Field(default=1000, ge=1)
    max_attempt_metrics: int = Field(default=100_000, ge=1)
    max_metric_record_kb: float = Field(default=64.0, gt=0)
    max_json_body_mb: float = Field(default=16.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.environment != "development" and self.secret_key.get_secret_value() == DEFAULT_SECRET:
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
    def worker_approval_required(self) -> bool:
        if self.require_worker_approval is None:
            return self.environment == "production"
        return self.require_worker_approval

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def max_bundle_bytes(self) -> int:
        return int(self.max_bundle_mb * 1024 * 1024)

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_files=self.max_bundle_files,
            max_file_bytes=int(self.max_bundle_file_mb * 1024 * 1024),
            max_total_bytes=int(self.max_unpacked_mb * 1024 * 1024),
            max_compression_ratio=self.max_compression_ratio,
        )

    @property
    def effective_api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return (self.api_url or f"http://{host}:{self.port}").rstrip("/")


@lru_cache
def get_settings() -> Settings:
    return Settings()
