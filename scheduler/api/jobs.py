from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from contract import routes
from contract.jobs import (
    Artifact,
    ArtifactList,
    InspectResponse,
    Job,
    JobList,
    LogEntries,
    LogEntry,
    MetricSeries,
    MetricsResponse,
    ResubmitRequest,
)
from scheduler.api.deps import CurrentUser, JobIdPath, RuntimeDep
from scheduler.db import TERMINAL_JOB_STATES
from scheduler.services import artifacts as artifacts_service
from scheduler.services import events
from scheduler.services import jobs as jobs_service
from scheduler.services import logs as logs_service
from scheduler.services import metrics as metrics_service
from scheduler.services.uploads import read_upload

router = APIRouter(tags=["jobs"])


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
                        "env": {
                            "type": "string",
                            "description": 'JSON object of environment variables for the script, e.g. {"LR": "1e-4"}'
                            " (names not TWINKLE_* nor HOME, TMPDIR, *_VISIBLE_DEVICES)",
                        },
                        "args": {
                            "type": "string",
                            "description": 'JSON list of arguments: the worker runs python ENTRYPOINT ARGS...',
                        },
                        "allow_unsandboxed": {
                            "type": "string",
                            "enum": ["true", "false"],
                            "description": "run on a worker without a sandbox too (isolation 'none'); default false",
                        },
                        "launcher": {
                            "type": "string",
                            "enum": ["python", "torchrun", "ray"],
                            "description": "how the worker starts the script; default: read from the script",
                        },
                    },
                }
            }
        },
    }
}


@router.post(routes.SCRIPTS_INSPECT, response_model=InspectResponse, openapi_extra=_UPLOAD_DOC)
async def inspect_script(request: Request, user: CurrentUser, rt: RuntimeDep) -> InspectResponse:
    """Read a script's DeviceGroups statically (the script is parsed, never run); nothing is stored."""
    filename, data, fields = await read_upload(request, rt.settings.max_bundle_bytes)
    return await rt.run(
        jobs_service.inspect_upload, filename, data, fields.get("entrypoint") or None, rt.settings.archive_limits
    )


@router.post(routes.JOBS, status_code=201, response_model=Job, openapi_extra=_UPLOAD_DOC)
async def create_job(request: Request, user: CurrentUser, rt: RuntimeDep) -> Job:
    """Submit a job: multipart ``file`` (.py or .zip), optional ``entrypoint``, ``name`` and ``request`` (JSON
    overriding the DeviceGroups read from the script), ``env`` (JSON object) and ``args`` (JSON list) given to
    the script, ``allow_unsandboxed`` (``true`` lets the job run on a worker that declared isolation ``none``; by
    default jobs run only on sandboxed workers), and ``launcher`` (``python``, ``torchrun`` or ``ray``; default:
    decided from the script, see ``contract.jobs.LAUNCHER_DOC``).

    Every problem is reported at once (422); an oversize bundle is 413, a truncated upload 400; nothing is
    stored on any error. A request no registered worker could run is accepted and held with a
    ``pending_reason``, since a matching donor may join later.
    """
    filename, data, fields = await read_upload(request, rt.settings.max_bundle_bytes)
    s = rt.settings
    return await rt.in_session(
        jobs_service.submit_upload, rt.storage, user, filename, data, fields, s.archive_limits, s.queue_estimate_ttl_s
    )


@router.post(routes.JOB_RESUBMIT, status_code=201, response_model=Job)
async def resubmit_job(job_id: JobIdPath, body: ResubmitRequest, user: CurrentUser, rt: RuntimeDep) -> Job:
    """Run a job's bundle again as a new job (any state; the original is untouched). ``name``, ``env``,
    ``args`` and ``request`` (DeviceGroups) override the original's; a field left out keeps it. The new job's
    ``resubmitted_from`` names the original."""
    sub, key = await rt.in_session(jobs_service.prepare_resubmit, user, job_id, body)
    sub.bundle_zip = await rt.run(rt.storage.get_bytes, key)  # no storage call inside a DB transaction
    return await rt.in_session(jobs_service.submit, rt.storage, user, sub, rt.settings.queue_estimate_ttl_s)


@router.get(routes.JOBS, response_model=JobList)
async def list_jobs(
    user: CurrentUser,
    rt: RuntimeDep,
    state: Annotated[str | None, Query(description="filter, e.g. queued or running,assigned")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> JobList:
    """The caller's jobs, newest first.

    Each queued job carries ``queue_position``, an estimate of its place in the dispatch order: users take
    turns in the order of their oldest queued job, each user's jobs first in, first out. The dispatcher also
    weighs fair share (running jobs, last served), held jobs and free slot shapes, so the real order can
    differ. Positions for the whole page come from two database queries, whatever its size.
    """
    return await rt.in_session(
        jobs_service.job_page, user, state, limit, offset, rt.settings.queue_estimate_ttl_s, readonly=True
    )


@router.get(routes.JOB, response_model=Job)
async def get_job(job_id: JobIdPath, user: CurrentUser, rt: RuntimeDep) -> Job:
    """One job with its attempts; while queued, ``queue_position`` (an estimate, see ``GET /jobs``) and
    ``pending_reason`` say why it waits."""
    return await rt.in_session(jobs_service.job_view, user, job_id, rt.settings.queue_estimate_ttl_s, readonly=True)


@router.post(routes.JOB_CANCEL, response_model=Job)
async def cancel_job(job_id: JobIdPath, user: CurrentUser, rt: RuntimeDep) -> Job:
    """Cancel: a queued (or not yet started) job at once; a running job becomes ``cancelling`` and its worker
    stops it when its next heartbeat answers ``cancel``."""
    job, ended = await rt.in_session(jobs_service.cancel_job_view, user, job_id)
    if ended:
        await rt.run(events.job_ended, rt.redis, job_id, job.state)
    return job


# written out (no $ref): LogEntries is not a response model of any route, so it is not in the spec's components
_LOG_ENTRIES_SCHEMA = {
    "type": "object", "title": "LogEntries", "required": ["lines"],
    "properties": {"lines": {"type": "array", "items": LogEntry.model_json_schema()}},
}

LogFormat = Annotated[
    Literal["text", "json"],
    Query(description="text (default): the lines as plain text; json: LogEntries, each line with its attempt, "
          "time (ts, epoch seconds) and stream (stdout, stderr or system)"),
]


@router.get(
    routes.JOB_LOGS,
    response_class=PlainTextResponse,
    responses={200: {"content": {"application/json": {"schema": _LOG_ENTRIES_SCHEMA}}}},
)
async def job_logs(
    job_id: JobIdPath,
    user: CurrentUser,
    rt: RuntimeDep,
    format: LogFormat = "text",
    timestamps: Annotated[bool, Query(description="text only: start each line with its UTC time")] = False,
) -> Response:
    """All attempts' logs (finished attempts from storage, live ones from Redis): plain text, or with
    ``?format=json`` one entry per line with its time and stream."""
    job = await rt.in_session(jobs_service.get_job, user, job_id)
    attempts = [(a.n, a.logs_persisted) for a in job.attempts]
    if format == "json":
        entries = await rt.run(logs_service.full_entries, rt.redis, rt.storage, job.user_id, job.id, attempts)
        body = LogEntries(lines=[LogEntry.model_validate(e) for e in entries])
        return Response(body.model_dump_json(), media_type="application/json")
    text = await rt.run(logs_service.full_text, rt.redis, rt.storage, job.user_id, job.id, attempts, timestamps)
    return PlainTextResponse(text)


@router.get(routes.JOB_LOGS_STREAM, response_class=StreamingResponse)
async def stream_logs(
    job_id: JobIdPath,
    user: CurrentUser,
    rt: RuntimeDep,
    last_event_id: Annotated[str | None, Header()] = None,
    format: LogFormat = "text",
) -> StreamingResponse:
    """Live logs as server-sent events: one event per line (``id`` = Redis stream id, honours
    ``Last-Event-ID``), closing with ``event: end`` once the job has ended. Each event's data is the line's
    text, or with ``?format=json`` its ``LogEntry`` (attempt, ts, stream, text) as JSON."""
    job = await rt.in_session(jobs_service.get_job, user, job_id)

    async def is_ended() -> bool:
        return bool(await rt.in_session(jobs_service.has_ended, job_id))

    backlog = None
    if not last_event_id and job.state in {x.value for x in TERMINAL_JOB_STATES}:
        exists = await rt.run(rt.redis.exists, logs_service.stream_key(job_id))
        if not exists:  # Redis forgot the stream; replay the persisted logs
            attempts = [(a.n, a.logs_persisted) for a in job.attempts]
            backlog = await rt.run(logs_service.full_entries, rt.redis, rt.storage, job.user_id, job_id, attempts)
    return StreamingResponse(
        logs_service.sse_stream(rt.redis_url, job_id, last_event_id, is_ended, backlog, as_json=format == "json"),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    routes.JOB_METRICS,
    response_model=MetricsResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def job_metrics(
    job_id: JobIdPath,
    user: CurrentUser,
    rt: RuntimeDep,
    format: Annotated[
        Literal["json", "csv"], Query(description="json (default) or csv: attempt,step,ts,<metric names sorted>")
    ] = "json",
    series: Annotated[
        MetricSeries, Query(description="all (default); training: the script's records; system: the worker's sys/ "
                            "samples")
    ] = "all",
) -> Any:
    """Training metrics the job reported (``model.calculate_metric``), every attempt, in step order, plus the
    worker's samples of the job's processes under ``sys/`` (``sys/cpu_percent``, ``sys/rss_bytes``,
    ``sys/gpu0/util_percent``, ...; chart those against ``ts``). ``?series=training`` or ``?series=system`` keeps
    one kind.

    ``step`` is the optimizer step. To forward metrics elsewhere (W&B, MLflow, a dashboard), poll this route
    with the user's token and send the records you have not seen (the key ``(attempt, step, ts)`` is unique),
    or take ``?format=csv``."""
    metrics = await rt.in_session(metrics_service.job_metrics, user, job_id, series)
    if format == "csv":
        return Response(
            metrics_service.metrics_csv(metrics), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{job_id}-metrics.csv"'},
        )
    return metrics


@router.get(routes.JOB_ARTIFACTS, response_model=ArtifactList)
async def job_artifacts(job_id: JobIdPath, request: Request, user: CurrentUser, rt: RuntimeDep) -> ArtifactList:
    """Files the job uploaded (checkpoints under ``output/``), each with a presigned, short-lived link."""
    rows = await rt.in_session(artifacts_service.job_artifacts, user, job_id)
    base = rt.settings.public_url or str(request.base_url)
    items: list[Any] = [
        Artifact(
            attempt=r.attempt, path=r.path, size=r.size,
            url=rt.storage.presigned_url(r.key, expires_s=rt.settings.download_ttl_s, base_url=base),
        )
        for r in rows
    ]
    return ArtifactList(items=items)


@router.get(
    routes.JOB_ARTIFACTS_ZIP,
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def job_artifacts_zip(
    job_id: JobIdPath,
    user: CurrentUser,
    rt: RuntimeDep,
    attempt: Annotated[int | None, Query(ge=1, le=1_000_000, description="default: the latest with files")] = None,
    folder: Annotated[
        str | None, Query(max_length=1024, description="one folder, e.g. output/last-checkpoint (default: all)")
    ] = None,
) -> StreamingResponse:
    """A checkpoint folder (or every file of an attempt) as one zip, streamed from storage (local or S3) as it
    is read, so any size downloads in constant memory. Names inside start at the folder's name."""
    plan = await rt.in_session(artifacts_service.zip_plan, user, job_id, attempt, folder)
    return StreamingResponse(
        artifacts_service.stream_zip(rt.storage, plan.files),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{plan.filename}"', "Cache-Control": "no-store"},
    )
