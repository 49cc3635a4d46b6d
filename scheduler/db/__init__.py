"""The job database: SQLAlchemy 2 models, engine/session setup and Alembic migrations."""

from scheduler.db.models import (
    ACTIVE_JOB_STATES,
    TERMINAL_JOB_STATES,
    ApiTokenModel,
    ArtifactModel,
    AttemptModel,
    AttemptState,
    Base,
    Credit,
    JobKind,
    JobModel,
    JobState,
    MetricModel,
    UserModel,
    Validation,
    WorkerModel,
    WorkerState,
)
from scheduler.db.session import Database, migrate, new_id, utcnow

__all__ = [
    "ACTIVE_JOB_STATES",
    "TERMINAL_JOB_STATES",
    "ApiTokenModel",
    "ArtifactModel",
    "AttemptModel",
    "AttemptState",
    "Base",
    "Credit",
    "Database",
    "JobKind",
    "JobModel",
    "JobState",
    "MetricModel",
    "UserModel",
    "Validation",
    "WorkerModel",
    "WorkerState",
    "migrate",
    "new_id",
    "utcnow",
]
