"""Artifacts (checkpoints and other files) a job's attempts uploaded."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.db import ArtifactModel, UserModel
from scheduler.services.jobs import get_job


def list_artifacts(session: Session, job_id: str) -> list[ArtifactModel]:
    return list(
        session.scalars(
            sa.select(ArtifactModel)
            .where(ArtifactModel.job_id == job_id)
            .order_by(ArtifactModel.attempt, ArtifactModel.path)
        )
    )


def job_artifacts(session: Session, user: UserModel, job_id: str) -> list[ArtifactModel]:
    """The files a job of ``user`` uploaded (another user's job is 404)."""
    job = get_job(session, user, job_id)
    return list(list_artifacts(session, job.id))
