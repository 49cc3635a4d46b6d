"""Quotas on what a worker (and so a job) writes: artifacts, log lines, metric records.

Each limit is a setting (``scheduler/settings.py``); a write over one is refused with 413 ``quota_exceeded``
whose ``fields`` name the limit (``limit``: the setting, ``max``: its value, ``got``: what was asked), and the
refusal is noted in the job's log, so its owner sees why output is missing. The worker's outbox drops a refused
entry with a log line of its own (a 4xx is never retried).
"""

from __future__ import annotations

import logging

import redis

from scheduler.errors import PayloadTooLarge
from scheduler.services import logs as logs_service

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def exceeded(what: str, setting: str, limit: float, got: object, unit: str = "") -> PayloadTooLarge:
    """The error for a write over ``setting`` (its env name without the prefix)."""
    from contract.errors import ErrorCode

    shown = f"{limit:g}{unit}" if isinstance(limit, float) else f"{limit}{unit}"
    return PayloadTooLarge(
        f"{what} is over the platform's limit {setting} = {shown} (TWINKLE_SCHEDULER_{setting}); it was not "
        "stored. Write less (fewer or smaller checkpoints, fewer log lines or metrics) or ask the admin",
        code=ErrorCode.QUOTA_EXCEEDED,
        fields={"limit": setting, "max": str(limit), "got": str(got)},
    )


def note(r: redis.Redis, job_id: str, attempt: int, err: PayloadTooLarge) -> None:
    """Say in the job's log that a write was refused, once per attempt and limit (a worker that keeps sending
    must not flood the log with notes). Never fails the request: the refusal is the answer."""
    try:
        limit = err.fields.get("limit", "")
        if not r.hsetnx(logs_service.usage_key(job_id), f"{attempt}:noted:{limit}", "1"):
            return
        r.expire(logs_service.usage_key(job_id), logs_service.END_TTL_S)
        logs_service.system_line(
            r, job_id, attempt, f"[platform] refused: {err.message} (further refusals of this kind are not noted)"
        )
    except redis.RedisError as exc:
        log.warning("could not note a quota refusal in job %s's log: %s", job_id, exc)
