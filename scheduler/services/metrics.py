"""Training metrics rows reported by workers (``POST /attempts/.../metrics``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.db import MetricModel


def list_metrics(session: Session, job_id: str) -> list[MetricModel]:
    return list(
        session.scalars(
            sa.select(MetricModel)
            .where(MetricModel.job_id == job_id)
            .order_by(MetricModel.attempt, MetricModel.step, MetricModel.id)
        )
    )
