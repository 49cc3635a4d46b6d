"""Artifacts (checkpoints and other files) a job's attempts uploaded."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.db import ArtifactModel


def list_artifacts(session: Session, job_id: str) -> list[ArtifactModel]:
    return list(
        session.scalars(
            sa.select(ArtifactModel)
            .where(ArtifactModel.job_id == job_id)
            .order_by(ArtifactModel.attempt, ArtifactModel.path)
        )
    )
