from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from contract import routes
from contract.attempts import (
    Accepted,
    ArtifactStored,
    FinishRequest,
    FinishResponse,
    LogsRequest,
    MetricsRequest,
    ResumeFile,
    ResumeFrom,
    StartResponse,
)
from scheduler.api.deps import CurrentWorker, RuntimeDep, SessionDep
from scheduler.db import AttemptState
from scheduler.services import attempts as attempts_service
from scheduler.services import events
from scheduler.services import logs as logs_service

router = APIRouter(tags=["attempts"])


@router.post(routes.ATTEMPT_START, response_model=StartResponse)
def start(
    job_id: str, attempt: int, request: Request, token: CurrentWorker, session: SessionDep, rt: RuntimeDep
) -> StartResponse:
    """Confirm an assignment before running it. The idempotency check of ``twinkle.run_attempt``: a second
    start of the same attempt, or a start of a stale one, is 409 ``stale_attempt``; do not run then.
    ``resume_from`` names the checkpoint the platform recorded last for the latest earlier attempt that saved one
    (``checkpoint``) and lists its files with download links."""
    f = attempts_service.start(session, token, job_id, attempt)
    resume = attempts_service.resume_files(session, f.job)
    session.rollback()
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
    logs_service.system_line(rt.redis, job_id, attempt, f"attempt {attempt} started on worker {f.attempt.worker_id}")
    return StartResponse(
        job_id=job_id, attempt=attempt, entrypoint=f.job.entrypoint, user_id=f.job.user_id, resume_from=resume_from
    )


@router.get(routes.ATTEMPT_BUNDLE, response_class=StreamingResponse)
def bundle(job_id: str, attempt: int, token: CurrentWorker, session: SessionDep, rt: RuntimeDep) -> StreamingResponse:
    """The job's bundle (a zip with the entrypoint at its top level)."""
    f = attempts_service.fence(session, token, job_id, attempt, (AttemptState.ASSIGNED, AttemptState.RUNNING))
    key = f.job.bundle_key
    session.rollback()
    return StreamingResponse(
        rt.storage.iter_bytes(key),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
    )


@router.post(routes.ATTEMPT_LOGS, response_model=Accepted)
def post_logs(
    job_id: str, attempt: int, body: LogsRequest, token: CurrentWorker, session: SessionDep, rt: RuntimeDep
) -> Accepted:
    """Append log lines (fenced); they go to the job's Redis stream for live readers."""
    attempts_service.fence(session, token, job_id, attempt, attempts_service.WRITABLE)
    session.rollback()
    n = logs_service.append(rt.redis, job_id, attempt, [line.model_dump() for line in body.lines])
    return Accepted(accepted=n)


@router.post(routes.ATTEMPT_METRICS, response_model=Accepted)
def post_metrics(
    job_id: str, attempt: int, body: MetricsRequest, token: CurrentWorker, session: SessionDep
) -> Accepted:
    """Record training metrics (fenced): ``{step, ts, metrics}`` per record."""
    return Accepted(accepted=attempts_service.add_metrics(session, token, job_id, attempt, body.records))


@router.put(routes.ATTEMPT_ARTIFACT, response_model=ArtifactStored, status_code=201)
async def put_artifact(
    job_id: str,
    attempt: int,
    path: str,
    request: Request,
    token: CurrentWorker,
    session: SessionDep,
    rt: RuntimeDep,
    content_length: Annotated[int | None, Header()] = None,
) -> ArtifactStored:
    """Upload one file of the attempt (raw body) to ``users/{user}/jobs/{job}/attempts/{n}/{path}``.
    ``Content-Length`` must match the body, else 400 and nothing is kept."""
    attempts_service.check_artifact_path(path)
    await run_in_threadpool(attempts_service.fence, session, token, job_id, attempt, attempts_service.WRITABLE)
    await run_in_threadpool(session.rollback)
    body = await attempts_service.spool_body(request.stream(), content_length)
    assert content_length is not None  # spool_body refuses a body without one (411)
    try:
        row = await run_in_threadpool(
            attempts_service.store_artifact, session, rt.storage, token, job_id, attempt, path, body, content_length
        )
    finally:
        body.close()
    return ArtifactStored(attempt=attempt, path=row.path, size=row.size)


@router.post(routes.ATTEMPT_FINISH, response_model=FinishResponse)
def finish(
    job_id: str, attempt: int, body: FinishRequest, token: CurrentWorker, session: SessionDep, rt: RuntimeDep
) -> FinishResponse:
    """Report the attempt's end state (succeeded, failed or cancelled). Send logs and artifacts first: writes
    after ``finish`` are refused as stale. The attempt's log is then persisted to storage."""
    f = attempts_service.finish(session, token, job_id, attempt, body)
    job_state, user_id = f.job.state, f.job.user_id
    msg = f"attempt {attempt} {job_state}" + (f" (exit code {body.exit_code})" if body.exit_code is not None else "")
    events.attempt_ended(
        rt.db, rt.redis, rt.storage, user_id=user_id, job_id=job_id, attempt=attempt, job_state=job_state, message=msg
    )
    return FinishResponse(job_id=job_id, attempt=attempt, state=job_state)
