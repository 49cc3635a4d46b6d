"""Why a job failed, and the word a user sees for where it stands (``Job.failure``, ``Job.phase``).

Computed by the API from what it recorded, so every client (CLI, web UI) shows the same reason: the last
attempt's exit code (a negative one is the signal that killed it), the worker limit it hit (``FinishRequest.limit``),
its stderr tail (read from its log when the finish was recorded), or why the platform gave up on it (lost worker).
"""

from __future__ import annotations

import signal as signals
from typing import Any

from contract.jobs import Failure, Phase
from scheduler.db import AttemptModel, AttemptState, JobModel, JobState
from scheduler.services.queue import is_held

__all__ = ["end_message", "failure_of", "phase_of", "signal_name"]

STDERR_TAIL = 20


def signal_name(num: int) -> str:
    try:
        return signals.Signals(num).name
    except ValueError:
        return f"signal {num}"


def phase_of(job: JobModel, held: bool | None = None) -> Phase:
    """``held`` (queued, no worker can run it), ``starting`` (assigned), ``stopping`` (cancelling), else the state."""
    if job.state == JobState.QUEUED:
        return "held" if (is_held(job.pending_reason) if held is None else held) else "queued"
    if job.state == JobState.ASSIGNED:
        return "starting"
    if job.state == JobState.CANCELLING:
        return "stopping"
    state: Any = str(job.state)
    return state


def _summary(exit_code: int | None, limit: str | None, error: str | None) -> tuple[str, str, str | None]:
    """(kind, summary, signal) of an attempt's end."""
    if limit:
        return "limit", limit, signal_name(-exit_code) if exit_code is not None and exit_code < 0 else None
    if exit_code is not None and exit_code < 0:
        name = signal_name(-exit_code)
        return "signal", f"killed by signal {name}", name
    if exit_code is not None:
        return "exit_code", f"exit code {exit_code}", None
    first = (error or "").strip().splitlines()
    return "error", first[0][:500] if first else "failed", None


def end_message(n: int, state: str, exit_code: int | None, limit: str | None, error: str | None) -> str:
    """The one log line that says how an attempt ended ("attempt 1 failed: exit code 1")."""
    if state != "failed":
        return f"attempt {n} {state}" + (f" (exit code {exit_code})" if exit_code is not None else "")
    return f"attempt {n} failed: {_summary(exit_code, limit, error)[1]}"


def failure_of(job: JobModel) -> Failure | None:
    """The reason of a failed job, from its last attempt (``None`` unless the job failed)."""
    if job.state != JobState.FAILED:
        return None
    last: AttemptModel | None = job.attempts[-1] if job.attempts else None
    if last is None:
        return Failure(attempt=0, kind="error", summary=(job.error or "failed").splitlines()[0][:500],
                       exit_code=None, signal=None, limit=None, stderr_tail=[])
    error = last.error or job.error
    if last.state in (AttemptState.LOST, AttemptState.EXPIRED):
        kind, summary, sig = "lost", (error or "its worker was lost").splitlines()[0][:500], None
    else:
        kind, summary, sig = _summary(last.exit_code, last.limit_hit, error)
    tail = [str(x) for x in (last.stderr_tail or [])][-STDERR_TAIL:]
    if not tail and error and "\n" in error:  # attempts recorded before the tail was kept: the error's lines
        tail = error.splitlines()[1:][-STDERR_TAIL:]
    return Failure(attempt=last.n, kind=kind, summary=summary, exit_code=last.exit_code,  # type: ignore[arg-type]
                   signal=sig, limit=last.limit_hit, stderr_tail=tail)
