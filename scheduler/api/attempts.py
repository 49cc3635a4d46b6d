from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from contract import routes
from contract.attempts import (
    Accepted,
    ArtifactStored,
    AttemptDevices,
    FinishRequest,
    FinishResponse,
    LogsRequest,
    MetricsRequest,
    ResumeFile,
    ResumeFrom,
    StartResponse,
)
from scheduler.api.deps import AttemptPath, CurrentWorker, JobIdPath, RuntimeDep
from scheduler.db import AttemptState, JobState
from scheduler.errors import PayloadTooLarge, StaleAttempt
from scheduler.services import attempts as attempts_service
from scheduler.services import events, quotas, validation
from scheduler.services import logs as logs_service
from scheduler.services.failures import end_message
from scheduler.services.quotas import MIB

log = logging.getLogger(__name__)

router = APIRouter(tags=["attempts"])


@router.post(routes.ATTEMPT_START, response_model=StartResponse)
async def start(
    job_id: JobIdPath, attempt: AttemptPath, request: Request, token: CurrentWorker, rt: RuntimeDep
) -> StartResponse:
    """Confirm an assignment before running it. The idempotency check of a claimed assignment: a second
    start of the same attempt, or a start of a stale one, is 409 ``stale_attempt``; do not run then.
    ``resume_from`` names the complete checkpoint (its marker recorded, every file it lists recorded) the platform
    recorded last for the latest earlier attempt that saved one (``checkpoint``) and lists its files with download
    links. ``env``: what the platform adds to the job's environment (``TWINKLE_DETERMINISTIC=1`` always; a replay
    also ``TWINKLE_STOP_AFTER_STEPS``). ``launcher`` and ``devices`` say how to start the job and on which of the
    worker's devices."""

    def work(session: Session) -> tuple[Any, Any, Any, str]:
        f = attempts_service.start(session, token, job_id, attempt)
        return (
            f, attempts_service.resume_candidates(session, f.job), attempts_service.placement(session, f.job),
            attempts_service.worker_name(session, f.attempt),
        )

    f, candidates, placed, worker_name = await rt.in_session(work, lane="worker")
    # markers are read from storage after the session closed (no network call inside a transaction)
    resume = await rt.run(attempts_service.first_complete, candidates, rt.storage.get_bytes, lane="worker")
    resume_from = None
    if resume is not None:
        base = rt.settings.public_url or str(request.base_url)
        resume_from = ResumeFrom(
            attempt=resume.attempt,
            checkpoint=resume.checkpoint,
            files=[
                ResumeFile(path=r.path, size=r.size,
                           url=rt.storage.presigned_url(r.key, expires_s=rt.settings.download_ttl_s, base_url=base))
                for r in resume.files
            ],
        )
    try:
        await rt.run(
            logs_service.system_line, rt.redis, job_id, attempt,
            f"attempt {attempt} started on worker {worker_name}", lane="worker",
        )
    except redis.RedisError as exc:  # the attempt is started (committed); a missing note must not undo that
        log.warning("could not note the start of job %s attempt %s in its log: %s", job_id, attempt, exc)
    return StartResponse(
        job_id=job_id, attempt=attempt, entrypoint=f.job.entrypoint, user_id=f.job.user_id, resume_from=resume_from,
        env=validation.job_env(f.job, validation.ReplayPolicy.from_settings(rt.settings)),
        launcher=placed.launcher,
        devices=[AttemptDevices(group=g, device_type=t, devices=d) for g, t, d in placed.devices],
        user_env={str(k): str(v) for k, v in (f.job.env or {}).items()}, args=[str(a) for a in (f.job.args or [])],
    )


@router.get(routes.ATTEMPT_BUNDLE, response_class=StreamingResponse)
async def bundle(job_id: JobIdPath, attempt: AttemptPath, token: CurrentWorker, rt: RuntimeDep) -> StreamingResponse:
    """The job's bundle (a zip with the entrypoint at its top level)."""
    f = await rt.in_session(
        attempts_service.fence, token, job_id, attempt, (AttemptState.ASSIGNED, AttemptState.RUNNING), lane="worker"
    )
    key = f.job.bundle_key
    return StreamingResponse(
        rt.storage.iter_bytes(key),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
    )


@router.post(routes.ATTEMPT_LOGS, response_model=Accepted)
async def post_logs(
    job_id: JobIdPath, attempt: AttemptPath, body: LogsRequest, token: CurrentWorker, rt: RuntimeDep
) -> Accepted:
    """Append log lines (fenced); they go to the job's Redis stream for live readers. With ``batch`` a retried
    post is applied once (``accepted`` is then 0). While Redis is down: 503 with ``Retry-After``; send again."""
    await rt.in_session(attempts_service.fence, token, job_id, attempt, attempts_service.WRITABLE, lane="worker")
    s = rt.settings
    lines = [line.model_dump() for line in body.lines]
    size = sum(len(line["text"].encode("utf-8", "surrogatepass")) for line in lines)
    if size > s.max_log_post_kb * 1024:
        err = quotas.exceeded(f"a log post of {size} bytes", "MAX_LOG_POST_KB", s.max_log_post_kb, size, " KiB")
        await rt.run(quotas.note, rt.redis, job_id, attempt, err, lane="worker")
        raise err
    n = await rt.run(
        partial(logs_service.append, max_lines=s.max_attempt_log_lines, max_bytes=int(s.max_attempt_log_mb * MIB)),
        rt.redis, job_id, attempt, lines, body.batch, lane="worker",
    )
    if n <= logs_service.OVER_LINES:
        if n >= logs_service.OVER_LINES + logs_service.FIRST_TIME:
            err = quotas.exceeded(f"attempt {attempt}'s log", "MAX_ATTEMPT_LOG_LINES", s.max_attempt_log_lines,
                                  f"more ({len(lines)} in this post)", " lines")
        else:
            err = quotas.exceeded(f"attempt {attempt}'s log", "MAX_ATTEMPT_LOG_MB", s.max_attempt_log_mb,
                                  f"more ({size} bytes in this post)", " MiB")
        await rt.run(quotas.note, rt.redis, job_id, attempt, err, lane="worker")
        raise err
    return Accepted(accepted=max(n, 0))


@router.post(routes.ATTEMPT_METRICS, response_model=Accepted)
async def post_metrics(
    job_id: JobIdPath, attempt: AttemptPath, body: MetricsRequest, token: CurrentWorker, rt: RuntimeDep
) -> Accepted:
    """Record training metrics (fenced): ``{step, ts, metrics}`` per record; a record the attempt already
    reported (same step and ts) is not stored again, so retries are safe."""
    s = rt.settings
    try:
        n = await rt.in_session(
            partial(attempts_service.add_metrics, per_post=s.max_metrics_per_post, per_attempt=s.max_attempt_metrics,
                    record_bytes=int(s.max_metric_record_kb * 1024)),
            token, job_id, attempt, body.records, lane="worker",
        )
    except PayloadTooLarge as err:
        await rt.run(quotas.note, rt.redis, job_id, attempt, err, lane="worker")
        raise
    return Accepted(accepted=n)


@router.put(routes.ATTEMPT_ARTIFACT, response_model=ArtifactStored, status_code=201)
async def put_artifact(
    job_id: JobIdPath,
    attempt: AttemptPath,
    path: str,
    request: Request,
    token: CurrentWorker,
    rt: RuntimeDep,
    content_length: Annotated[int | None, Header()] = None,
) -> ArtifactStored:
    """Upload one file of the attempt (raw body) to ``users/{user}/jobs/{job}/attempts/{n}/{path}``.
    ``Content-Length`` must match the body, else 400 and nothing is kept."""
    attempts_service.check_artifact_path(path)
    s = rt.settings
    try:
        await rt.in_session(
            attempts_service.check_artifact_quota, token, job_id, attempt, path, content_length,
            int(s.max_artifact_mb * MIB), int(s.max_attempt_artifacts_mb * MIB), lane="worker",
        )
    except PayloadTooLarge as err:  # refused before a byte of the body is read
        await rt.run(quotas.note, rt.redis, job_id, attempt, err, lane="worker")
        raise
    body = await attempts_service.spool_body(request.stream(), content_length)
    assert content_length is not None  # spool_body refuses a body without one (411)
    try:
        row = await rt.in_session(
            attempts_service.store_artifact, rt.storage, token, job_id, attempt, path, body, content_length,
            lane="worker",
        )
    finally:
        body.close()
    return ArtifactStored(attempt=attempt, path=row.path, size=row.size)


@router.post(routes.ATTEMPT_FINISH, response_model=FinishResponse)
async def finish(
    job_id: JobIdPath, attempt: AttemptPath, body: FinishRequest, token: CurrentWorker, rt: RuntimeDep
) -> FinishResponse:
    """Report the attempt's end state (succeeded, failed or cancelled). Send logs and artifacts first: writes
    after ``finish`` are refused as stale. A finish sent again after a lost answer gets the same answer.

    The attempt's log is persisted to storage *before* the end is committed: while Redis is down the answer
    is 503 with ``Retry-After`` and nothing changes, so a finished job's stored log always holds every line."""
    plan = await rt.in_session(attempts_service.plan_finish, token, job_id, attempt, body, lane="worker")
    if plan.done:
        return FinishResponse(job_id=job_id, attempt=attempt, state=plan.state)
    # the one line that says how the attempt ended, with the reason (the worker does not write its own)
    msg = end_message(attempt, plan.state, body.exit_code, body.limit, body.error)
    tail = await rt.run(events.persist_logs, rt.redis, rt.storage, plan.user_id, job_id, attempt, msg, lane="worker")
    try:
        f = await rt.in_session(
            attempts_service.finish, token, job_id, attempt, body, validation.ReplayPolicy.from_settings(rt.settings),
            tail, lane="worker",
        )
    except StaleAttempt:  # a concurrent retry of this finish won the race: answer as it did
        plan = await rt.in_session(attempts_service.plan_finish, token, job_id, attempt, body, lane="worker")
        return FinishResponse(job_id=job_id, attempt=attempt, state=plan.state)
    job_state = f.job.state
    await rt.run(events.logs_persisted, rt.worker_db, rt.redis, job_id, attempt, job_state, lane="worker")
    if job_state == JobState.VALIDATING:
        try:
            await rt.run(logs_service.system_line, rt.redis, job_id, attempt, f.job.pending_reason or "validating",
                         lane="worker")
        except redis.RedisError as exc:  # committed; the job view's pending_reason says the same
            log.warning("could not note the replay of job %s attempt %s in its log: %s", job_id, attempt, exc)
    if f.canary is not None:
        log.info("canary job %s: its worker %s", job_id, f.canary)
    v = f.verdict
    if v is not None:  # a replay ended: tell the checked job's owner what it decided, in that job's log
        await rt.run(
            partial(events.attempt_ended, rt.worker_db, rt.redis, rt.storage, user_id=v.user_id, job_id=v.job_id,
                    attempt=v.attempt, job_state=v.job_state, message=v.message),
            lane="worker",
        )
    return FinishResponse(job_id=job_id, attempt=attempt, state=job_state)
