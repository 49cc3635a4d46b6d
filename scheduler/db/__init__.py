"""The job database: SQLAlchemy 2 models, engine/session setup and Alembic migrations."""

from scheduler.db.models import (
    ACTIVE_JOB_STATES,
    TERMINAL_JOB_STATES,
    ApiTokenModel,
    ArtifactModel,
    AttemptModel,
    AttemptState,
    Base,
    JobModel,
    JobState,
    MetricModel,
    UserModel,
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
    "Database",
    "JobModel",
    "JobState",
    "MetricModel",
    "UserModel",
    "WorkerModel",
    "WorkerState",
    "migrate",
    "new_id",
    "utcnow",
]
