"""SQLAlchemy 2 typed models. The database is the source of truth for jobs, attempts and worker leases."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on both backends (SQLite hands back naive values otherwise)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        # SQLite compares the stored text, so every value must be written in one form.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    # read once by SQLAlchemy when the mapping is built, never mutated
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: sa.JSON, list[Any]: sa.JSON}  # noqa: RUF012


class JobState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    CANCELLING = "cancelling"
    VALIDATING = "validating"  # reported succeeded; a replay on a trusted worker decides (neither active nor terminal)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_JOB_STATES = (JobState.ASSIGNED, JobState.RUNNING, JobState.CANCELLING)
TERMINAL_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class AttemptState(StrEnum):
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # the worker's lease expired, or it registered afresh
    EXPIRED = "expired"  # never confirmed by start within START_DEADLINE_S


class JobKind(StrEnum):
    USER = "user"
    REPLAY = "replay"  # the platform's re-run of a sampled attempt's first k steps on a trusted worker
    CANARY = "canary"  # the platform's known-answer job a new donor's worker must pass before it gets users' jobs


class CanaryState(StrEnum):
    """A worker's known-answer check (``workers.canary_state``; NULL: none was required at its registration)."""

    PENDING = "pending"  # its canary is queued or running: it gets no other job
    PASSED = "passed"
    FAILED = "failed"  # a wrong curve, no curve, a failed exit, or out of time: reputation 0, no jobs


class Validation(StrEnum):
    """The spot check of a succeeded attempt (``attempts.validation``; NULL: not sampled)."""

    PENDING = "pending"
    VALIDATED = "validated"
    UNVERIFIED = "unverified"
    INCONCLUSIVE = "inconclusive"


class Credit(StrEnum):
    PENDING = "pending"
    CREDITED = "credited"
    FORFEITED = "forfeited"


class WorkerState(StrEnum):
    LIVE = "live"
    LOST = "lost"
    SUPERSEDED = "superseded"  # a newer registration with the same token took over (one live worker per token)
    REVOKED = "revoked"  # its token was revoked


class UserModel(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    created_at: Mapped[dt.datetime]

    tokens: Mapped[list[ApiTokenModel]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiTokenModel(Base):
    """A user (``twk_u_``) or worker (``twk_w_``) token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # "user" | "worker"
    user_id: Mapped[str | None] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str | None] = mapped_column(sa.String(128))  # who donates, for worker tokens
    created_at: Mapped[dt.datetime]
    last_used_at: Mapped[dt.datetime | None]
    # A platform pool (set by the admin): its workers are not spot-checked and run the replays of donors' attempts.
    trusted: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # worker tokens: set once an admin approved its workers (or at creation when approval is not required, or for
    # a trusted pool); workers of an unapproved token register and heartbeat but get no jobs
    approved_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]  # a revoked token authenticates nothing
    # a trusted pool's token, shared by its nodes: one live worker per name instead of one per token
    pool: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    user: Mapped[UserModel | None] = relationship(back_populates="tokens")


class WorkerModel(Base):
    """One registration of a worker. A token has at most one live (not superseded, not revoked) worker (per name,
    for a pool token): each registration is a new row, and the earlier rows of its token are marked
    ``superseded`` (and renamed ``<name> (superseded <id>)``, so (token, name) stays unique)."""

    __tablename__ = "workers"
    __table_args__ = (sa.UniqueConstraint("token_id", "name", name="uq_workers_token_name"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    token_id: Mapped[str] = mapped_column(sa.ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    hostname: Mapped[str] = mapped_column(sa.String(255))
    owner: Mapped[str | None] = mapped_column(sa.String(128))
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    device_groups: Mapped[list[Any]]
    # How the worker isolates jobs: "bwrap", "container" or "none" (what it declared at its last registration;
    # workers older than the declaration send nothing and count as "none").
    isolation: Mapped[str] = mapped_column(sa.String(16), default="none", server_default="none")
    registered_at: Mapped[dt.datetime]
    last_heartbeat_at: Mapped[dt.datetime]
    lease_expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    jobs_run: Mapped[int] = mapped_column(default=0)
    gpu_seconds: Mapped[float] = mapped_column(sa.Float, default=0.0)  # credited (validated) device-seconds
    probe: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)  # contract.workers.HardwareProbe
    reputation: Mapped[float] = mapped_column(sa.Float, default=0.5, server_default="0.5")
    validated_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    trusted: Mapped[bool] = mapped_column(default=False, server_default=sa.false())  # copied from its token
    superseded_by: Mapped[str | None] = mapped_column(sa.String(32))
    canary_state: Mapped[str | None] = mapped_column(sa.String(16))  # CanaryState
    canary_detail: Mapped[str | None] = mapped_column(sa.Text)  # why it passed or failed, in words


class JobModel(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_state_created", "state", "created_at"),
        sa.Index("ix_jobs_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16))
    entrypoint: Mapped[str] = mapped_column(sa.String(512))
    request: Mapped[dict[str, Any]]
    warnings: Mapped[list[Any]]
    bundle_key: Mapped[str] = mapped_column(sa.String(1024))
    bundle_size: Mapped[int] = mapped_column(sa.BigInteger)
    attempt: Mapped[int] = mapped_column(default=0)  # the live attempt's number; 0 before the first
    worker_id: Mapped[str | None] = mapped_column(sa.ForeignKey("workers.id", ondelete="SET NULL"), index=True)
    slots: Mapped[list[Any] | None] = mapped_column(sa.JSON)  # indexes of the worker's offered groups in use
    pending_reason: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)
    # what the script gets besides its bundle (checked by contract.jobs.env_problems / args_problems)
    env: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    args: Mapped[list[Any] | None] = mapped_column(sa.JSON)
    resubmitted_from: Mapped[str | None] = mapped_column(sa.String(32))  # no FK: the original may be deleted
    created_at: Mapped[dt.datetime]
    queued_at: Mapped[dt.datetime]
    assigned_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime]
    kind: Mapped[str] = mapped_column(sa.String(16), default=JobKind.USER, server_default="user")
    # a replay job: the job and attempt it checks
    replay_of: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    replay_attempt: Mapped[int | None]
    # a canary job: the worker it checks (the only one it may run on) and the loss per step it must report;
    # the curve never leaves the platform (the worker gets the script, not the answer)
    canary_for: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    canary_expected: Mapped[list[Any] | None] = mapped_column(sa.JSON)

    attempts: Mapped[list[AttemptModel]] = relationship(
        back_populates="job", order_by="AttemptModel.n", cascade="all, delete-orphan"
    )


class AttemptModel(Base):
    __tablename__ = "attempts"
    __table_args__ = (sa.UniqueConstraint("job_id", "n", name="uq_attempts_job_n"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    n: Mapped[int]
    worker_id: Mapped[str | None] = mapped_column(sa.ForeignKey("workers.id", ondelete="SET NULL"), index=True)
    state: Mapped[str] = mapped_column(sa.String(16))
    assigned_at: Mapped[dt.datetime]
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]
    exit_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    limit_hit: Mapped[str | None] = mapped_column(sa.Text)  # the worker limit that stopped it, as reported
    stderr_tail: Mapped[list[Any] | None] = mapped_column(sa.JSON)  # last stderr lines, read from its log at finish
    logs_persisted: Mapped[bool] = mapped_column(default=False)
    validation: Mapped[str | None] = mapped_column(sa.String(16))  # Validation; NULL: not sampled
    device_seconds: Mapped[float] = mapped_column(sa.Float, default=0.0, server_default="0")
    credit: Mapped[str | None] = mapped_column(sa.String(16))  # Credit; NULL: nothing to credit

    job: Mapped[JobModel] = relationship(back_populates="attempts")


class MetricModel(Base):
    __tablename__ = "metrics"
    __table_args__ = (sa.Index("ix_metrics_job_attempt_step", "job_id", "attempt", "step"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    step: Mapped[int]
    ts: Mapped[float] = mapped_column(sa.Float)
    metrics: Mapped[dict[str, Any]]


class ArtifactModel(Base):
    __tablename__ = "artifacts"
    __table_args__ = (sa.UniqueConstraint("job_id", "attempt", "path", name="uq_artifacts_job_attempt_path"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    path: Mapped[str] = mapped_column(sa.String(1024))
    key: Mapped[str] = mapped_column(sa.String(2048))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime]
