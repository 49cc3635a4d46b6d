"""Training metrics rows reported by workers (``POST /attempts/.../metrics``), as JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from contract.jobs import MetricRecord, MetricSeries, MetricsResponse, is_system_record
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


def job_metrics(session: Session, user: UserModel, job_id: str, series: MetricSeries = "all") -> MetricsResponse:
    """The metrics a job of ``user`` reported, every attempt, in step order (another user's job is 404);
    ``series`` keeps the script's records (training) or the worker's ``sys/`` samples (system) only."""
    job = get_job(session, user, job_id)
    return MetricsResponse(
        records=[
            MetricRecord(attempt=r.attempt, step=r.step, ts=r.ts, metrics=r.metrics)
            for r in list_metrics(session, job.id)
            if series == "all" or is_system_record(r.metrics or {}) == (series == "system")
        ]
    )


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A CSV cell; text a spreadsheet would run as a formula (``=HYPERLINK(...)`` from a job) is quoted with a
    leading apostrophe, numbers are written as they are."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def metrics_csv(response: MetricsResponse) -> str:
    """``attempt,step,ts,<metric names sorted>``, one row per record; a metric a record lacks is an empty cell."""
    names = sorted({k for r in response.records for k in r.metrics})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["attempt", "step", "ts", *(_cell(n) for n in names)])
    for r in response.records:
        writer.writerow([r.attempt, r.step, r.ts, *(_cell(r.metrics.get(n)) for n in names)])
    return out.getvalue()
