"""Requeue the active jobs of a worker that is gone (lease expired, re-registered) or an unstarted assignment."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.db import (
    ACTIVE_JOB_STATES,
    AttemptModel,
    AttemptState,
    JobKind,
    JobModel,
    JobState,
    WorkerModel,
    utcnow,
)
from scheduler.services.usage import record_attempt_end


@dataclass
class Requeued:
    """An attempt that ended without its worker reporting; its logs still need persisting after commit."""

    job_id: str
    user_id: str
    attempt: int
    job_state: str  # what the job became: queued, cancelled or failed
    message: str


def requeue_jobs(
    session: Session, jobs: list[JobModel], *, reason: str, attempt_state: str, max_attempts: int
) -> list[Requeued]:
    """End each job's live attempt with ``attempt_state`` and queue the job again (attempt n+1 comes from the
    next dispatch). A job that was being cancelled is cancelled; one out of attempts fails."""
    now = utcnow()
    out: list[Requeued] = []
    workers = {w.id: w for w in session.scalars(sa.select(WorkerModel).where(
        WorkerModel.id.in_({j.worker_id for j in jobs if j.worker_id}))).all()}
    for job in jobs:
        attempt = session.scalar(
            sa.select(AttemptModel).where(AttemptModel.job_id == job.id, AttemptModel.n == job.attempt)
        )
        if attempt is not None:
            attempt.state = attempt_state
            attempt.ended_at = now
            attempt.error = reason
            record_attempt_end(attempt, job, workers.get(job.worker_id or ""), now)
        if job.state == JobState.CANCELLING:
            job.state, job.ended_at = JobState.CANCELLED, now
            message = f"attempt {job.attempt} ended ({reason}); the job was being cancelled, so it is cancelled"
        elif job.attempt >= max_attempts:
            job.state, job.ended_at = JobState.FAILED, now
            job.error = f"gave up after {job.attempt} attempts; last: {reason}"
            message = f"attempt {job.attempt} ended ({reason}); no attempts left (MAX_ATTEMPTS={max_attempts})"
        else:
            job.state = JobState.QUEUED
            job.queued_at = now
            job.pending_reason = f"requeued: {reason}"
            message = f"attempt {job.attempt} ended ({reason}); requeued as attempt {job.attempt + 1}"
        job.slots = None
        job.updated_at = now
        out.append(Requeued(job.id, job.user_id, job.attempt, job.state, message))
        if job.kind == JobKind.REPLAY and job.state in (JobState.FAILED, JobState.CANCELLED):
            from scheduler.services import validation  # validation credits through usage, as this module does

            verdict = validation.conclude(session, job, "lost", validation.ReplayPolicy(max_attempts=max_attempts))
            if verdict is not None:
                out.append(Requeued(verdict.job_id, verdict.user_id, verdict.attempt, verdict.job_state,
                                    verdict.message))
    return out


def requeue_active_jobs(session: Session, worker_ids: list[str], *, reason: str, max_attempts: int) -> list[Requeued]:
    if not worker_ids:
        return []
    jobs = session.scalars(
        sa.select(JobModel)
        .where(JobModel.worker_id.in_(worker_ids), JobModel.state.in_([s.value for s in ACTIVE_JOB_STATES]))
        .with_for_update()
    ).all()
    return requeue_jobs(session, list(jobs), reason=reason, attempt_state=AttemptState.LOST, max_attempts=max_attempts)
