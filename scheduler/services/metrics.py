"""Training metrics rows reported by workers (``POST /attempts/.../metrics``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from contract.jobs import MetricRecord, MetricsResponse
from scheduler.db import MetricModel, UserModel
from scheduler.services.jobs import get_job


def list_metrics(session: Session, job_id: str) -> list[MetricModel]:
    return list(
        session.scalars(
            sa.select(MetricModel)
            .where(MetricModel.job_id == job_id)
            .order_by(MetricModel.attempt, MetricModel.step, MetricModel.id)
        )
    )


def job_metrics(session: Session, user: UserModel, job_id: str) -> MetricsResponse:
    """The metrics a job of ``user`` reported, every attempt, in step order (another user's job is 404)."""
    job = get_job(session, user, job_id)
    return MetricsResponse(
        records=[
            MetricRecord(attempt=r.attempt, step=r.step, ts=r.ts, metrics=r.metrics)
            for r in list_metrics(session, job.id)
        ]
    )
