"""Writes from workers about one attempt, each fenced by ``(job_id, attempt)``.

The attempt number is a fencing token: a write is accepted only from the job's live attempt, on a worker of
the calling token, in a state where that write makes sense. Anything else is 409 ``stale_attempt``, so a
worker that was presumed dead (and whose job now runs elsewhere as attempt n+1) can never overwrite it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from contract.attempts import CHECKPOINT_MARKER, FinishRequest, MetricIn
from contract.errors import ErrorCode
from scheduler.db import (
    ApiTokenModel,
    ArtifactModel,
    AttemptModel,
    AttemptState,
    JobKind,
    JobModel,
    JobState,
    MetricModel,
    WorkerModel,
    utcnow,
)
from scheduler.errors import BadRequest, Forbidden, InvalidRequest, LengthRequired, NotFound, StaleAttempt
from scheduler.services import canary, matching, quotas, validation
from scheduler.services.usage import record_attempt_end
from scheduler.storage import Storage, attempt_key

log = logging.getLogger(__name__)

WRITABLE = (AttemptState.RUNNING,)


@dataclass
class Fenced:
    job: JobModel
    attempt: AttemptModel
    verdict: validation.Verdict | None = None  # finish of a replay: what it decided about the checked attempt
    canary: str | None = None  # finish of a canary: its worker's verdict, in words


def fence(session: Session, token: ApiTokenModel, job_id: str, n: int, allowed: tuple[str, ...]) -> Fenced:
    job = session.get(JobModel, job_id)
    attempt = session.scalar(sa.select(AttemptModel).where(AttemptModel.job_id == job_id, AttemptModel.n == n))
    if job is None or attempt is None:
        raise NotFound(f"no attempt {n} of job {job_id!r}", code=ErrorCode.ATTEMPT_NOT_FOUND)
    worker = session.get(WorkerModel, attempt.worker_id) if attempt.worker_id else None
    if worker is None or worker.token_id != token.id:
        raise Forbidden(f"attempt {n} of job {job_id} is assigned to another worker", code=ErrorCode.NOT_YOUR_ATTEMPT)
    if n != job.attempt or attempt.state not in allowed:
        raise StaleAttempt(
            f"attempt {n} of job {job_id} is stale (attempt is {attempt.state}; the job is {job.state} "
            f"at attempt {job.attempt}); stop it",
            fields={"job_attempt": str(job.attempt), "attempt_state": attempt.state, "job_state": job.state},
        )
    return Fenced(job, attempt)


def start(session: Session, token: ApiTokenModel, job_id: str, n: int) -> Fenced:
    """Confirm the assignment; the idempotency check of a claimed assignment (a second start gets 409)."""
    f = fence(session, token, job_id, n, (AttemptState.ASSIGNED,))
    now = utcnow()
    # Conditional updates: of two concurrent starts of the same attempt only one matches.
    res = cast(sa.CursorResult[Any], session.execute(
        sa.update(AttemptModel)
        .where(AttemptModel.id == f.attempt.id, AttemptModel.state == AttemptState.ASSIGNED)
        .values(state=AttemptState.RUNNING, started_at=now)
    ))
    res2 = cast(sa.CursorResult[Any], session.execute(
        sa.update(JobModel)
        .where(JobModel.id == job_id, JobModel.attempt == n, JobModel.state == JobState.ASSIGNED)
        .values(state=JobState.RUNNING, started_at=sa.func.coalesce(JobModel.started_at, now), updated_at=now,
                pending_reason=None)
    ))
    if res.rowcount != 1 or res2.rowcount != 1:
        session.rollback()
        raise StaleAttempt(f"attempt {n} of job {job_id} was started or ended already", fields={})
    session.commit()
    session.refresh(f.job)
    session.refresh(f.attempt)
    return f


@dataclass
class Placement:
    """How the attempt runs: its launcher and, per requested group, the devices of the worker it holds."""

    launcher: str
    devices: list[tuple[str, str, list[int]]]  # (job group name, device type offered, device indexes)


def placement(session: Session, job: JobModel) -> Placement:
    """What ``start`` tells the worker: the job's launcher and the devices the dispatcher gave the attempt."""
    request = job.request or {}
    launcher = str(request.get("launcher") or "python")
    worker = session.get(WorkerModel, job.worker_id) if job.worker_id else None
    if worker is None:
        return Placement(launcher, [])
    groups = list(worker.device_groups or [])
    offers = tuple(matching.Offer.from_dict(g) for g in groups)
    wanted = list(request.get("device_groups") or [{"name": "default"}])
    devices = []
    for k, (idx, held) in enumerate(matching.held_devices(job.slots, offers)):
        name = str(wanted[k].get("name", "default")) if k < len(wanted) else f"group{k}"
        devices.append((name, str(groups[idx].get("device_type", "cpu")), list(held)))
    return Placement(launcher, devices)


@dataclass
class ResumePoint:
    attempt: int
    checkpoint: str  # "output/<folder>"
    files: list[ArtifactModel]  # without the marker
    marker: ArtifactModel | None = None


def resume_candidates(session: Session, job: JobModel) -> list[ResumePoint]:
    """The checkpoints the next attempt could resume from, best first, chosen by the platform, never by a name.

    Candidates are the checkpoint folders (``output/<folder>/...``) of earlier attempts of this job whose
    completion marker (``contract.attempts.CHECKPOINT_MARKER``) the platform recorded: every upload passed the
    fence, so only the worker assigned that attempt could write them, while it held the assignment. Later attempts
    first, and within one the folder whose marker was recorded last (the highest row id: the worker marks each
    folder after its files, as it appears). A name like ``checkpoint-999999`` counts for nothing. Whether a
    candidate is complete is ``first_complete``'s to check (it reads the markers from storage, outside any
    transaction). A replay gets the resume point of the attempt it checks.
    """
    job_id, before = job.id, job.attempt
    if job.kind == JobKind.REPLAY and job.replay_of is not None and job.replay_attempt is not None:
        # a replay starts where the checked attempt started: from that attempt's resume point, if it had one
        job_id, before = job.replay_of, job.replay_attempt
    rows = session.scalars(
        sa.select(ArtifactModel)
        .where(
            ArtifactModel.job_id == job_id, ArtifactModel.attempt < before, ArtifactModel.path.like("output/%/%")
        )
        .order_by(ArtifactModel.attempt.desc(), ArtifactModel.id.desc())
    ).all()
    out = []
    for row in rows:
        parts = row.path.split("/")
        if len(parts) != 3 or parts[2] != CHECKPOINT_MARKER:
            continue
        checkpoint = "/".join(parts[:2])
        files = sorted(
            (r for r in rows
             if r.attempt == row.attempt and r.path.startswith(checkpoint + "/") and r.path != row.path),
            key=lambda r: r.path,
        )
        out.append(ResumePoint(row.attempt, checkpoint, files, marker=row))
    return out


def first_complete(candidates: list[ResumePoint], read: Callable[[str], bytes]) -> ResumePoint | None:
    """The first candidate whose marker lists exactly files recorded with those sizes; ``read`` gets a stored
    object's bytes. A marker that does not parse, or names a file missing or of another size, rules its folder
    out (a folder whose upload was cut short, or a marker from a broken worker)."""
    for point in candidates:
        if point.marker is None:
            continue
        try:
            listed = json.loads(read(point.marker.key))["files"]
            if not isinstance(listed, dict):
                raise TypeError("files is not an object")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("job %s: checkpoint %s of attempt %s has an unreadable marker (%s); skipped",
                        point.marker.job_id, point.checkpoint, point.attempt, exc)
            continue
        recorded = {r.path[len(point.checkpoint) + 1:]: r.size for r in point.files}
        if listed and recorded == listed:
            return point
        log.warning("job %s: checkpoint %s of attempt %s is incomplete (%d of %d files as listed); skipped",
                    point.marker.job_id, point.checkpoint, point.attempt,
                    sum(recorded.get(k) == v for k, v in listed.items()), len(listed))
    return None


def add_metrics(
    session: Session,
    token: ApiTokenModel,
    job_id: str,
    n: int,
    records: list[MetricIn],
    *,
    per_post: int = 0,
    per_attempt: int = 0,
    record_bytes: int = 0,
) -> int:
    """Insert the records the attempt has not reported yet: a record is ``(step, ts)`` within its attempt, so
    a batch the worker sends again (its answer was lost in an outage) adds nothing twice. Quotas (0: none):
    ``per_post`` records in one post, ``per_attempt`` stored for the attempt, ``record_bytes`` of JSON per record;
    over one, nothing of the post is stored (413 ``quota_exceeded``)."""
    fence(session, token, job_id, n, WRITABLE)
    if per_post and len(records) > per_post:
        raise quotas.exceeded(f"a metrics post of {len(records)} records", "MAX_METRICS_PER_POST", per_post,
                              len(records))
    if record_bytes:
        for r in records:
            size = len(json.dumps(r.metrics, separators=(",", ":"), default=str))
            if size > record_bytes:
                raise quotas.exceeded(f"the metrics of step {r.step} ({size} bytes of JSON)",
                                      "MAX_METRIC_RECORD_KB", record_bytes / 1024, size, " KiB")
    seen = set()
    if records:
        seen = {
            (step, ts)
            for step, ts in session.execute(
                sa.select(MetricModel.step, MetricModel.ts).where(
                    MetricModel.job_id == job_id, MetricModel.attempt == n,
                    MetricModel.step.in_({r.step for r in records}),
                )
            )
        }
    fresh = []
    for r in records:
        if (r.step, r.ts) not in seen:
            seen.add((r.step, r.ts))
            fresh.append(dict(job_id=job_id, attempt=n, step=r.step, ts=r.ts, metrics=r.metrics))
    if fresh and per_attempt:
        stored = session.scalar(
            sa.select(sa.func.count()).select_from(MetricModel).where(
                MetricModel.job_id == job_id, MetricModel.attempt == n
            )
        ) or 0
        if stored + len(fresh) > per_attempt:
            raise quotas.exceeded(f"attempt {n}'s metrics ({stored} stored, {len(fresh)} more)",
                                  "MAX_ATTEMPT_METRICS", per_attempt, stored + len(fresh))
    if fresh:
        session.execute(sa.insert(MetricModel), fresh)
    session.commit()
    return len(fresh)


def check_artifact_quota(
    session: Session, token: ApiTokenModel, job_id: str, n: int, path: str, size: int | None, per_file: int,
    per_attempt: int,
) -> None:
    """Fence the upload and check it against the quotas before its body is read: ``per_file`` bytes for one file,
    ``per_attempt`` for all of the attempt's files (a file uploaded again counts once, at its new size)."""
    fence(session, token, job_id, n, WRITABLE)
    if size is None:
        raise LengthRequired("send a Content-Length header with the artifact body")
    if size > per_file:
        raise quotas.exceeded(f"the file {path} ({size} bytes)", "MAX_ARTIFACT_MB", per_file / quotas.MIB, size,
                              " MiB")
    others = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(ArtifactModel.size), 0)).where(
            ArtifactModel.job_id == job_id, ArtifactModel.attempt == n, ArtifactModel.path != path
        )
    ) or 0
    if others + size > per_attempt:
        raise quotas.exceeded(f"attempt {n}'s files ({others} bytes stored, {size} more for {path})",
                              "MAX_ATTEMPT_ARTIFACTS_MB", per_attempt / quotas.MIB, others + size, " MiB")


def check_artifact_path(path: str) -> str:
    p = PurePosixPath(path)
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(ord(c) < 32 or c == "\x7f" for c in path)
        or any(part in ("", ".", "..") for part in path.split("/"))
        or len(path) > 1024
        or (p.parts and p.parts[0].endswith(":"))
    ):
        raise InvalidRequest(
            f"artifact path {path!r} must be relative, without '..', '.', empty segments, backslashes or control "
            "characters",
            code=ErrorCode.BAD_PATH,
            fields={"path": "relative path without .. expected"},
        )
    return path


async def spool_body(stream: AsyncIterator[bytes], expected: int | None, limit: int | None = None) -> Any:
    """Copy a request body to a temporary file and check its length against ``Content-Length``."""
    if expected is None:
        raise LengthRequired("send a Content-Length header with the artifact body")
    tmp = tempfile.TemporaryFile()  # noqa: SIM115 - returned open: the caller streams it to storage, then closes it
    size = 0
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > expected or (limit is not None and size > limit):
                break
            tmp.write(chunk)
    except Exception as exc:  # the client went away mid-body
        tmp.close()
        raise BadRequest(f"the upload broke off after {size} bytes: {exc}", code=ErrorCode.TRUNCATED_UPLOAD) from exc
    if size != expected:
        tmp.close()
        raise BadRequest(
            f"Content-Length says {expected} bytes but the body had {'more' if size > expected else size}; "
            "nothing was kept, upload again",
            code=ErrorCode.LENGTH_MISMATCH,
        )
    tmp.seek(0)
    return tmp


def store_artifact(
    session: Session, storage: Storage, token: ApiTokenModel, job_id: str, n: int, path: str, body: Any, size: int
) -> ArtifactModel:
    f = fence(session, token, job_id, n, WRITABLE)
    user_id = f.job.user_id
    session.rollback()  # no storage call inside a DB transaction
    key = attempt_key(user_id, job_id, n, path)
    storage.put_file(key, body)
    # Fence again: the attempt may have gone stale during the upload; its object then stays under its own
    # attempt folder, where it cannot overwrite the newer attempt's files.
    fence(session, token, job_id, n, WRITABLE)
    row = session.scalar(
        sa.select(ArtifactModel).where(
            ArtifactModel.job_id == job_id, ArtifactModel.attempt == n, ArtifactModel.path == path
        )
    )
    if row is None:
        row = ArtifactModel(job_id=job_id, attempt=n, path=path, key=key, size=size, created_at=utcnow())
        session.add(row)
    else:
        row.size, row.created_at = size, utcnow()
    session.commit()
    return row


@dataclass
class FinishPlan:
    """What ``finish`` will do, read before the attempt's logs are persisted (outside any transaction)."""

    user_id: str
    state: str  # the attempt's (and job's) end state
    done: bool  # this finish was applied already (a retry whose first answer was lost)


def _end_state(job: JobModel, body: FinishRequest) -> str:
    if job.state == JobState.CANCELLING and body.state == "failed":
        return "cancelled"  # the worker killed it on our request; the non-zero exit is expected
    return body.state


def plan_finish(session: Session, token: ApiTokenModel, job_id: str, n: int, body: FinishRequest) -> FinishPlan:
    """Fence the finish. A repeat of a finish already applied (same attempt, same end state) is not stale:
    the worker retried after an outage swallowed the answer, and gets the same answer again."""
    try:
        f = fence(session, token, job_id, n, (AttemptState.ASSIGNED, AttemptState.RUNNING))
    except StaleAttempt:
        job = session.get(JobModel, job_id)
        attempt = session.scalar(sa.select(AttemptModel).where(AttemptModel.job_id == job_id, AttemptModel.n == n))
        states = {body.state, "cancelled"} if body.state == "failed" else {body.state}
        if job is not None and attempt is not None and job.attempt == n and attempt.state in states:
            # the same answer as the first time: a sampled success left the job validating
            same = JobState.VALIDATING if job.state == JobState.VALIDATING else attempt.state
            return FinishPlan(job.user_id, same, done=True)
        raise
    return FinishPlan(f.job.user_id, _end_state(f.job, body), done=False)


def worker_name(session: Session, attempt: AttemptModel) -> str:
    """The name the worker registered with (what the workers page shows), else its id."""
    name = session.scalar(sa.select(WorkerModel.name).where(WorkerModel.id == attempt.worker_id))
    return name or str(attempt.worker_id)


def finish(
    session: Session, token: ApiTokenModel, job_id: str, n: int, body: FinishRequest,
    policy: validation.ReplayPolicy | None = None, stderr_tail: list[str] | None = None,
) -> Fenced:
    """End the attempt. A donor's success may be sampled for a replay (the job is then ``validating``); the end of
    a replay judges the attempt it checked (``Fenced.verdict``); the end of a canary judges its worker
    (``Fenced.canary``), whatever ``policy`` (a canary was queued only because it was required). ``policy`` None:
    no spot checks. ``stderr_tail``: the last stderr lines of its log (``Job.failure``)."""
    f = fence(session, token, job_id, n, (AttemptState.ASSIGNED, AttemptState.RUNNING))
    now = utcnow()
    job, attempt = f.job, f.attempt
    state = _end_state(job, body)
    # Conditional: of two finishes of one attempt racing (a retry and its slow original) only one applies.
    res = cast(sa.CursorResult[Any], session.execute(
        sa.update(AttemptModel)
        .where(AttemptModel.id == attempt.id, AttemptModel.state.in_((AttemptState.ASSIGNED, AttemptState.RUNNING)))
        .values(state=state, ended_at=now, exit_code=body.exit_code, error=body.error, limit_hit=body.limit,
                stderr_tail=stderr_tail or None)
        .execution_options(synchronize_session="fetch")
    ))
    if res.rowcount != 1:
        session.rollback()
        raise StaleAttempt(f"attempt {n} of job {job_id} ended already", fields={})
    worker = session.get(WorkerModel, attempt.worker_id) if attempt.worker_id else None
    record_attempt_end(attempt, job, worker, now)
    if worker is not None:
        worker.jobs_run += 1
    job.state = state
    job.ended_at = now
    job.updated_at = now
    job.error = body.error if state == "failed" else None
    job.slots = None
    if job.kind == JobKind.CANARY:
        attempt.credit = None  # the platform's check, not work for anyone: nothing to credit
        f.canary = canary.judge(session, job, attempt, state)
    elif policy is not None and job.kind == JobKind.REPLAY:
        f.verdict = validation.conclude(session, job, state, policy)
    elif (
        policy is not None and state == JobState.SUCCEEDED and worker is not None
        and validation.should_sample(worker, policy) and validation.replay_possible(session, worker, policy)
    ):
        validation.start_replay(session, job, attempt, policy.steps)
    session.commit()
    return f
