from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from contract import routes
from contract.errors import ErrorCode
from contract.jobs import (
    Artifact,
    ArtifactList,
    Attempt,
    InspectResponse,
    Job,
    JobList,
    JobRequest,
    MetricRecord,
    MetricsResponse,
    StoredRequest,
)
from scheduler.api.deps import CurrentUser, RuntimeDep
from scheduler.db import TERMINAL_JOB_STATES, JobModel
from scheduler.errors import BadRequest, InvalidRequest, PayloadTooLarge
from scheduler.services import artifacts as artifacts_service
from scheduler.services import events
from scheduler.services import jobs as jobs_service
from scheduler.services import logs as logs_service
from scheduler.services import metrics as metrics_service
from scheduler.services.script_inspection import read_bundle

router = APIRouter(tags=["jobs"])

MULTIPART_OVERHEAD = 1024 * 1024

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "a .py script or a .zip"},
                        "entrypoint": {"type": "string", "description": "script inside the zip (default train.py)"},
                        "name": {"type": "string"},
                        "request": {
                            "type": "string",
                            "description": 'JSON {"device_groups": [{name, ranks, device_type, min_memory_gb}]}',
                        },
                        "allow_unsandboxed": {
                            "type": "string",
                            "enum": ["true", "false"],
                            "description": "run on a worker without a sandbox too (isolation 'none'); default false",
                        },
                    },
                }
            }
        },
    }
}


def stored_request(raw: Any) -> tuple[StoredRequest, list[str]]:
    """The job's stored request for display; a row that does not parse shows no groups and a warning instead
    of failing the whole listing."""
    try:
        req = StoredRequest.model_validate(raw)
        for g in req.device_groups:
            if not math.isfinite(g.min_memory_gb):
                raise ValueError("min_memory_gb is not finite")
        return req, []
    except (ValidationError, ValueError, TypeError):
        return StoredRequest(device_groups=[]), ["the stored resource request could not be read; cancel and resubmit"]


def job_model_to_job(job: JobModel, position: int | None = None) -> Job:
    request, request_warnings = stored_request(job.request)
    return Job(
        id=job.id,
        name=job.name,
        user_id=job.user_id,
        state=job.state,
        entrypoint=job.entrypoint,
        request=request,
        warnings=[str(w) for w in (job.warnings or [])] + request_warnings,
        bundle_size=job.bundle_size,
        attempt=job.attempt,
        worker_id=job.worker_id,
        queue_position=position,
        pending_reason=job.pending_reason if job.state == "queued" else None,
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        attempts=[
            Attempt(
                n=a.n, worker_id=a.worker_id, state=a.state, assigned_at=a.assigned_at, started_at=a.started_at,
                ended_at=a.ended_at, exit_code=a.exit_code, error=a.error,
            )
            for a in job.attempts
        ],
    )


async def read_upload(request: Request, max_bytes: int) -> tuple[str, bytes, dict[str, str]]:
    """Read a multipart upload completely, refusing oversize (413) and truncated (400) bodies.

    The body is read here rather than by FastAPI's form parsing because that parser silently accepts a body
    cut off before its closing boundary.
    """
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise InvalidRequest(
            "send the job as multipart/form-data with a 'file' field", fields={"file": "multipart upload expected"}
        )
    limit = max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    mb = max_bytes / 1024 / 1024
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the upload is {int(declared) / 1024 / 1024:.1f} MB; bundles may be at most {mb:g} MB "
            "(MAX_BUNDLE_MB); leave data and checkpoints out of the bundle",
            fields={"file": f"at most {mb:g} MB"},
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the upload exceeds {mb:g} MB (MAX_BUNDLE_MB)", fields={"file": "too large"})
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise BadRequest(
            f"the upload broke off after {size} bytes; nothing was stored", code=ErrorCode.TRUNCATED_UPLOAD
        ) from exc
    body = b"".join(chunks)
    if declared and declared.isdigit() and int(declared) != len(body):
        raise BadRequest(
            f"Content-Length says {declared} bytes but {len(body)} arrived; nothing was stored",
            code=ErrorCode.TRUNCATED_UPLOAD,
        )
    boundary = ""
    for part in ctype.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip('"')
    if not boundary or not body.rstrip(b"\r\n").endswith(b"--" + boundary.encode() + b"--"):
        raise BadRequest(
            "the upload is truncated (the multipart body has no closing boundary); nothing was stored",
            code=ErrorCode.TRUNCATED_UPLOAD,
        )
    request._body = body  # lets Starlette's parser read the bytes we already hold
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:  # any parser failure is a malformed upload
        raise BadRequest(f"the multipart body could not be parsed: {exc}", code=ErrorCode.BAD_UPLOAD) from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("the 'file' field (a .py script or a .zip bundle) is missing", fields={"file": "required"})
    data = await upload.read()
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the bundle is {len(data) / 1024 / 1024:.1f} MB; at most {mb:g} MB is accepted (MAX_BUNDLE_MB)",
            fields={"file": f"at most {mb:g} MB"},
        )
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return upload.filename or "train.py", data, fields


@router.post(routes.SCRIPTS_INSPECT, response_model=InspectResponse, openapi_extra=_UPLOAD_DOC)
async def inspect_script(request: Request, user: CurrentUser, rt: RuntimeDep) -> InspectResponse:
    """Read a script's DeviceGroups statically (the script is parsed, never run); nothing is stored."""
    filename, data, fields = await read_upload(request, rt.settings.max_bundle_bytes)
    return await rt.run(_inspect, filename, data, fields.get("entrypoint") or None, rt.settings.archive_limits)


def _inspect(filename: str, data: bytes, entrypoint: str | None, limits: Any) -> InspectResponse:
    bundle, problems = read_bundle(filename, data, entrypoint, limits)
    found = None if bundle is None else jobs_service.inspect_bundle_source(bundle.source, bundle.entrypoint, problems)
    if bundle is None or found is None:
        raise jobs_service._problems_error(problems)
    return InspectResponse(
        request=JobRequest.model_validate(found.request()), warnings=found.warnings, entrypoint=bundle.entrypoint
    )


@router.post(routes.JOBS, status_code=201, response_model=Job, openapi_extra=_UPLOAD_DOC)
async def create_job(request: Request, user: CurrentUser, rt: RuntimeDep) -> Job:
    """Submit a job: multipart ``file`` (.py or .zip), optional ``entrypoint``, ``name`` and ``request`` (JSON
    overriding the DeviceGroups read from the script), and ``allow_unsandboxed`` (``true`` lets the job run on a
    worker that declared isolation ``none``; by default jobs run only on sandboxed workers).

    Every problem is reported at once (422); an oversize bundle is 413, a truncated upload 400; nothing is
    stored on any error. A request no registered worker could run is accepted and held with a
    ``pending_reason``, since a matching donor may join later.
    """
    filename, data, fields = await read_upload(request, rt.settings.max_bundle_bytes)
    sub = await rt.run(
        jobs_service.prepare, filename, data, fields.get("entrypoint"), fields.get("name"), fields.get("request"),
        fields.get("allow_unsandboxed"), rt.settings.archive_limits,
    )
    return await rt.in_session(_create, rt.storage, user, sub)


def _create(session: Session, storage: Any, user: Any, sub: jobs_service.Submission) -> Job:
    job = jobs_service.create_job(session, storage, user, sub)
    positions = jobs_service.queue_positions(session, [job])
    job = jobs_service.get_job(session, user, job.id)
    return job_model_to_job(job, positions.get(job.id))


@router.get(routes.JOBS, response_model=JobList)
async def list_jobs(
    user: CurrentUser,
    rt: RuntimeDep,
    state: Annotated[str | None, Query(description="filter, e.g. queued or running,assigned")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobList:
    """The caller's jobs, newest first.

    Each queued job carries ``queue_position``, an estimate of its place in the dispatch order: users take
    turns in the order of their oldest queued job, each user's jobs first in, first out. The dispatcher also
    weighs fair share (running jobs, last served), held jobs and free slot shapes, so the real order can
    differ. Positions for the whole page come from two database queries, whatever its size.
    """

    def work(session: Session) -> JobList:
        items, total = jobs_service.list_jobs(session, user, state, limit, offset)
        positions = jobs_service.queue_positions(session, items)
        return JobList(items=[job_model_to_job(j, positions.get(j.id)) for j in items], total=total)

    return await rt.in_session(work)


@router.get(routes.JOB, response_model=Job)
async def get_job(job_id: str, user: CurrentUser, rt: RuntimeDep) -> Job:
    """One job with its attempts; while queued, ``queue_position`` (an estimate, see ``GET /jobs``) and
    ``pending_reason`` say why it waits."""

    def work(session: Session) -> Job:
        job = jobs_service.get_job(session, user, job_id)
        return job_model_to_job(job, jobs_service.queue_positions(session, [job]).get(job.id))

    return await rt.in_session(work)


@router.post(routes.JOB_CANCEL, response_model=Job)
async def cancel_job(job_id: str, user: CurrentUser, rt: RuntimeDep) -> Job:
    """Cancel: a queued (or not yet started) job at once; a running job becomes ``cancelling`` and its worker
    stops it when its next heartbeat answers ``cancel``."""

    def work(session: Session) -> tuple[Job, bool]:
        res = jobs_service.cancel_job(session, user, job_id)
        return job_model_to_job(res.job), res.ended

    job, ended = await rt.in_session(work)
    if ended:
        await rt.run(events.job_ended, rt.redis, job_id, job.state)
    return job


@router.get(routes.JOB_LOGS, response_class=PlainTextResponse)
async def job_logs(job_id: str, user: CurrentUser, rt: RuntimeDep) -> PlainTextResponse:
    """All attempts' logs as plain text (finished attempts from storage, live ones from Redis)."""
    job = await rt.in_session(jobs_service.get_job, user, job_id)
    attempts = [(a.n, a.logs_persisted) for a in job.attempts]
    return PlainTextResponse(await rt.run(logs_service.full_text, rt.redis, rt.storage, job.user_id, job.id, attempts))


@router.get(routes.JOB_LOGS_STREAM, response_class=StreamingResponse)
async def stream_logs(
    job_id: str,
    user: CurrentUser,
    rt: RuntimeDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Live logs as server-sent events: one event per line (``id`` = Redis stream id, honours
    ``Last-Event-ID``), closing with ``event: end`` once the job has ended."""
    job = await rt.in_session(jobs_service.get_job, user, job_id)

    def _ended() -> bool:
        with rt.db.session() as s:
            state = s.get(JobModel, job_id).state  # type: ignore[union-attr]
            return state in {x.value for x in TERMINAL_JOB_STATES}

    async def is_ended() -> bool:
        return await rt.run(_ended)

    backlog = None
    if not last_event_id and job.state in {x.value for x in TERMINAL_JOB_STATES}:
        exists = await rt.run(rt.redis.exists, logs_service.stream_key(job_id))
        if not exists:  # Redis forgot the stream; replay the persisted logs
            attempts = [(a.n, a.logs_persisted) for a in job.attempts]
            text = await rt.run(logs_service.full_text, rt.redis, rt.storage, job.user_id, job_id, attempts)
            backlog = text.splitlines()
    return StreamingResponse(
        logs_service.sse_stream(rt.redis_url, job_id, last_event_id, is_ended, backlog),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(routes.JOB_METRICS, response_model=MetricsResponse)
async def job_metrics(job_id: str, user: CurrentUser, rt: RuntimeDep) -> MetricsResponse:
    """Training metrics the job reported (``model.calculate_metric``), every attempt, in step order."""

    def work(session: Session) -> MetricsResponse:
        job = jobs_service.get_job(session, user, job_id)
        rows = metrics_service.list_metrics(session, job.id)
        return MetricsResponse(
            records=[MetricRecord(attempt=r.attempt, step=r.step, ts=r.ts, metrics=r.metrics) for r in rows]
        )

    return await rt.in_session(work)


@router.get(routes.JOB_ARTIFACTS, response_model=ArtifactList)
async def job_artifacts(job_id: str, request: Request, user: CurrentUser, rt: RuntimeDep) -> ArtifactList:
    """Files the job uploaded (checkpoints under ``output/``), each with a presigned, short-lived link."""

    def work(session: Session) -> list[Any]:
        job = jobs_service.get_job(session, user, job_id)
        return list(artifacts_service.list_artifacts(session, job.id))

    rows = await rt.in_session(work)
    base = rt.settings.public_url or str(request.base_url)
    items: list[Any] = [
        Artifact(
            attempt=r.attempt, path=r.path, size=r.size,
            url=rt.storage.presigned_url(r.key, expires_s=rt.settings.download_ttl_s, base_url=base),
        )
        for r in rows
    ]
    return ArtifactList(items=items)
