"""What happens after an attempt ends, once the DB transaction is committed (Redis and storage calls)."""

from __future__ import annotations

import logging

import redis
import sqlalchemy as sa

from scheduler.db import TERMINAL_JOB_STATES, AttemptModel, Database
from scheduler.services import logs
from scheduler.services.requeue import Requeued
from scheduler.storage import Storage

log = logging.getLogger(__name__)


def attempt_ended(
    db: Database,
    r: redis.Redis,
    storage: Storage,
    *,
    user_id: str,
    job_id: str,
    attempt: int,
    job_state: str,
    message: str | None = None,
) -> None:
    """Note the end in the live log, persist the attempt's lines to storage, and close live readers if the job
    ended. Failures are logged, not raised: the DB already holds the truth and readers fall back to it."""
    try:
        if message:
            logs.system_line(r, job_id, attempt, message)
        logs.persist(r, storage, user_id, job_id, attempt)
        _flag_logs_persisted(db, job_id, attempt)
    except Exception:  # see docstring
        log.exception("persisting logs of job %s attempt %s failed", job_id, attempt)
    job_ended(r, job_id, job_state)


def persist_logs(
    r: redis.Redis, storage: Storage, user_id: str, job_id: str, attempt: int, message: str
) -> list[str]:
    """Before a finish is committed: note the end in the live log and copy the attempt's lines to storage.
    Raises while Redis or storage is down, so the finish is refused (503) and retried instead of committed
    with a log that misses lines. Returns the attempt's stderr tail (for ``Job.failure``)."""
    logs.append(r, job_id, attempt, [{"stream": "system", "text": message}], batch="end")  # once, even if retried
    return logs.stderr_tail(logs.persist(r, storage, user_id, job_id, attempt))


def logs_persisted(db: Database, r: redis.Redis, job_id: str, attempt: int, job_state: str) -> None:
    """After a finish is committed: flag the stored log as complete and close live readers."""
    try:
        _flag_logs_persisted(db, job_id, attempt)
    except Exception:
        log.exception("flagging the stored log of job %s attempt %s failed", job_id, attempt)
    job_ended(r, job_id, job_state)


def job_ended(r: redis.Redis, job_id: str, job_state: str) -> None:
    if job_state not in {s.value for s in TERMINAL_JOB_STATES}:
        return
    try:
        logs.mark_end(r, job_id, job_state)
    except Exception:  # live readers also poll the DB
        log.exception("marking the end of job %s in Redis failed", job_id)


def requeued(db: Database, r: redis.Redis, storage: Storage, items: list[Requeued]) -> None:
    for item in items:
        attempt_ended(
            db, r, storage, user_id=item.user_id, job_id=item.job_id, attempt=item.attempt,
            job_state=item.job_state, message=item.message,
        )


def _flag_logs_persisted(db: Database, job_id: str, attempt: int) -> None:
    with db.session() as s:
        s.execute(
            sa.update(AttemptModel)
            .where(AttemptModel.job_id == job_id, AttemptModel.n == attempt)
            .values(logs_persisted=True)
        )
        s.commit()
