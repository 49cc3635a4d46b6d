"""Jobs: submit (validate everything, store, queue), resubmit, list, get with queue position, cancel."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import SimpleNamespace
from typing import Any, cast

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.orm import Session, selectinload

from contract.archive import DEFAULT_LIMITS, ArchiveLimits
from contract.errors import ErrorCode
from contract.jobs import (
    LAUNCHERS,
    Attempt,
    InspectResponse,
    Job,
    JobList,
    JobRequest,
    ResubmitRequest,
    StoredRequest,
    args_problems,
    env_problems,
)
from scheduler.db import (
    TERMINAL_JOB_STATES,
    AttemptModel,
    AttemptState,
    JobKind,
    JobModel,
    JobState,
    UserModel,
    WorkerModel,
    WorkerState,
    new_id,
    utcnow,
)
from scheduler.errors import Conflict, InvalidRequest, NotFound
from scheduler.services import matching
from scheduler.services import queue as queue_service
from scheduler.services.failures import failure_of, phase_of
from scheduler.services.script_inspection import (
    ARCHIVE_RULE,
    LAUNCHER_HINT,
    Inspection,
    decide_launcher,
    inspect_source,
    read_bundle,
)
from scheduler.storage import Storage, bundle_key


@dataclass
class Submission:
    job_id: str
    bundle_zip: bytes
    entrypoint: str
    inspection: Inspection
    request: dict[str, Any]
    name: str
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    resubmitted_from: str | None = None


def _problems_error(problems: list[tuple[str, str]]) -> InvalidRequest:
    fields: dict[str, str] = {}
    for key, msg in problems:
        fields[key] = f"{fields[key]}; {msg}" if key in fields else msg
    code = ErrorCode.NOT_PYTHON if any("not valid Python" in m for _, m in problems) else ErrorCode.INVALID_REQUEST
    if any(m.startswith(ARCHIVE_RULE) for _, m in problems):
        code = ErrorCode.ARCHIVE_REJECTED
    summary = " | ".join(m for _, m in problems)
    return InvalidRequest(f"the job was not accepted: {summary}", code=code, fields=fields)


def check_request(data: Any, field: str, problems: list[tuple[str, str]], source: str = "") -> dict[str, Any] | None:
    """Validate a resource request against ``JobRequest``, the one set of limits for both the explicit
    ``request`` field and what the script reader found; each violation becomes a problem under ``field``."""
    try:
        return JobRequest.model_validate(data).model_dump()
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(x) for x in (field, *err["loc"]))
            problems.append((loc, f"{source}{err['msg']}"))
        return None


def parse_request(raw: str | None, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f": {exc.msg} at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else " (nested too deeply)"
        problems.append(("request", f"request is not JSON{where}"))
        return None
    return check_request(data, "request", problems)


def inspect_bundle_source(source: str, entrypoint: str, problems: list[tuple[str, str]]) -> Inspection | None:
    """Read the script's request and hold it to the same limits as an explicit request."""
    try:
        inspection = inspect_source(source, entrypoint)
    except InvalidRequest as exc:
        problems.append(("file", exc.message))
        return None
    found = check_request(inspection.request(), "file.device_groups", problems, f"{entrypoint} declares: ")
    if found is None:
        return None
    inspection.device_groups = found["device_groups"]
    return inspection


def parse_json_field(raw: str | None, field_name: str, check: Any, problems: list[tuple[str, str]]) -> Any:
    """A form field holding JSON (``env``: an object, ``args``: a list), checked by ``check``; None if absent."""
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        problems.append((field_name, f"{field_name} is not JSON; send e.g. " + (
            '{"LR": "1e-4"}' if field_name == "env" else '["--epochs", "3"]')))
        return None
    found = check(value, field_name)
    problems.extend(found)
    return None if found else value


FLAG_VALUES = {"true": True, "1": True, "on": True, "yes": True, "false": False, "0": False, "off": False, "no": False}


def parse_flag(raw: str | None, field: str, problems: list[tuple[str, str]]) -> bool:
    """A form checkbox or flag: true/1/on/yes or false/0/off/no (absent or empty: false)."""
    if raw is None or not raw.strip():
        return False
    value = FLAG_VALUES.get(raw.strip().lower())
    if value is None:
        problems.append((field, f"{field} must be true or false, not {raw[:40]!r}"))
        return False
    return value


def prepare(
    filename: str,
    data: bytes,
    entrypoint: str | None,
    name: str | None,
    request: str | None,
    allow_unsandboxed: str | None = None,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    launcher: str | None = None,
    env: str | None = None,
    args: str | None = None,
) -> Submission:
    """Validate a submission completely before anything is stored; raises ``InvalidRequest`` with every problem.

    ``allow_unsandboxed`` (a form field) opts the job out of the sandbox requirement, as does
    ``allow_unsandboxed: true`` inside ``request``. ``launcher`` (a form field) wins over ``request.launcher``,
    which wins over what the script reader decided. CPU-bound (a zip is inflated once to check it, the script is
    parsed): run it in a worker thread."""
    problems: list[tuple[str, str]] = []
    override = parse_request(request, problems)
    opt_out = parse_flag(allow_unsandboxed, "allow_unsandboxed", problems)
    if launcher is not None and launcher.strip() and launcher.strip() not in LAUNCHERS:
        problems.append(("launcher", f"launcher must be one of {', '.join(LAUNCHERS)}, not {launcher[:40]!r}"))
    job_env = parse_json_field(env, "env", env_problems, problems)
    job_args = parse_json_field(args, "args", args_problems, problems)
    bundle, bundle_problems = read_bundle(filename, data, entrypoint or None, limits)
    problems.extend(bundle_problems)
    inspection = None
    if bundle is not None:
        if override is None:
            inspection = inspect_bundle_source(bundle.source, bundle.entrypoint, problems)
        else:  # the override replaces the script's groups, so only the script's syntax must hold
            try:
                inspection = inspect_source(bundle.source, bundle.entrypoint)
            except InvalidRequest as exc:
                problems.append(("file", exc.message))
    if problems or bundle is None or inspection is None:
        raise _problems_error(problems or [("file", "the upload could not be read")])
    if override is not None:
        inspection.warnings = [w for w in inspection.warnings if "DeviceGroup" not in w and "nproc" not in w]
    job_name = (name or "").strip() or PurePosixPath(filename).stem or "job"
    job_request = dict(override or inspection.request())
    job_request["allow_unsandboxed"] = bool(opt_out or job_request.get("allow_unsandboxed"))
    # the form field, then the request's own field; either means the owner decided
    chosen = (launcher or "").strip() or (override or {}).get("launcher")
    if chosen:  # the reader's doubts no longer apply
        inspection.warnings = [w for w in inspection.warnings if LAUNCHER_HINT not in w]
    elif override is not None:  # the request's groups, run the way the script's mode says
        chosen = decide_launcher(
            inspection.mode, job_request["device_groups"], mode_unread=inspection.mode_unread, ranks_unread=False,
            warnings=inspection.warnings,
        )
    job_request["launcher"] = chosen or inspection.launcher
    return Submission(
        job_id=new_id(),
        bundle_zip=bundle.zip_bytes,
        entrypoint=bundle.entrypoint,
        inspection=inspection,
        request=job_request,
        name=job_name[:255],
        env=job_env or {},
        args=job_args or [],
    )


def worker_views(session: Session, *, live_only: bool = False) -> list[matching.WorkerView]:
    q = sa.select(WorkerModel.id, WorkerModel.device_groups, WorkerModel.state, WorkerModel.isolation)
    if live_only:
        q = q.where(WorkerModel.state == WorkerState.LIVE)
    return [
        matching.WorkerView(
            wid, tuple(matching.Offer.from_dict(g) for g in groups), live=state == WorkerState.LIVE,
            sandboxed=matching.is_sandboxed(isolation),
        )
        for wid, groups, state, isolation in session.execute(q)
    ]


def create_job(session: Session, storage: Storage, user: UserModel, sub: Submission) -> JobModel:
    """Store the bundle, then insert the row; on any database error the bundle is removed again.

    The bundle goes first, before the session opens a transaction (no storage call inside one); then a single
    transaction reads the worker shapes (for the hold reason) and inserts the job."""
    session.rollback()  # a caller's read transaction ends here: no storage call inside a DB transaction
    key = bundle_key(user.id, sub.job_id)
    size = storage.put_bytes(key, sub.bundle_zip)
    try:
        catalog = matching.ShapeCatalog(worker_views(session))
        needs = matching.needs_from_request(sub.request)
        reason = catalog.hold_reason(needs, bool(sub.request.get("allow_unsandboxed"))) or "waiting for the dispatcher"
        now = utcnow()
        values: dict[str, Any] = dict(
            id=sub.job_id,
            user_id=user.id,
            name=sub.name,
            state=JobState.QUEUED,
            entrypoint=sub.entrypoint,
            request=sub.request,
            warnings=sub.inspection.warnings,
            bundle_key=key,
            bundle_size=size,
            attempt=0,
            pending_reason=reason,
            env=sub.env or None,
            args=sub.args or None,
            resubmitted_from=sub.resubmitted_from,
            created_at=now,
            queued_at=now,
            updated_at=now,
            kind=JobKind.USER,
        )
        # a Core insert, not a unit-of-work flush: half the CPU (bench/api_cpu.py), on the API's busiest write
        session.execute(sa.insert(cast(sa.Table, JobModel.__table__)), values)
        session.commit()
    except Exception:
        session.rollback()
        storage.delete(key)
        raise
    return JobModel(**values, attempts=[])  # the row as inserted, to show (never added to a session: no reload)


def get_job(session: Session, user: UserModel, job_id: str) -> JobModel:
    job = session.scalar(
        sa.select(JobModel).options(selectinload(JobModel.attempts)).where(JobModel.id == job_id)
    )
    if job is None or job.user_id != user.id or job.kind != JobKind.USER:  # replays are the platform's
        raise NotFound(f"no job {job_id!r}", code=ErrorCode.JOB_NOT_FOUND)  # another user's job is 404, not 403
    return job


# A listing is the API's most frequent call: its statements are built once (bind parameters, so SQLAlchemy's
# compiled cache hits) and read as plain rows, not ORM objects, which cost it more than the database did.
_JOBS = JobModel.__table__
_ATTEMPTS = AttemptModel.__table__
_MINE = sa.and_(_JOBS.c.user_id == sa.bindparam("user_id"), _JOBS.c.kind == JobKind.USER.value)  # replays: platform's
_IN_STATES = _JOBS.c.state.in_(sa.bindparam("states", expanding=True))
_COUNT = sa.select(sa.func.count()).select_from(_JOBS)
_PAGE = (
    sa.select(_JOBS)
    .order_by(_JOBS.c.created_at.desc(), _JOBS.c.id.desc())
    .limit(sa.bindparam("limit", type_=sa.Integer))
    .offset(sa.bindparam("offset", type_=sa.Integer))
)
_STATEMENTS = {
    False: (_COUNT.where(_MINE), _PAGE.where(_MINE)),
    True: (_COUNT.where(_MINE, _IN_STATES), _PAGE.where(_MINE, _IN_STATES)),
}
_PAGE_ATTEMPTS = (
    sa.select(_ATTEMPTS)
    .where(_ATTEMPTS.c.job_id.in_(sa.bindparam("job_ids", expanding=True)))
    .order_by(_ATTEMPTS.c.job_id, _ATTEMPTS.c.n)
)


def list_jobs(
    session: Session, user: UserModel, state: str | None, limit: int, offset: int
) -> tuple[list[Any], dict[str, list[Any]], int]:
    """A page of the user's jobs, newest first: (job rows, their attempt rows by job id, the total)."""
    states: list[str] = []
    if state:
        states = [s.strip().lower() for s in state.split(",") if s.strip()]
        unknown = [s for s in states if s not in {x.value for x in JobState}]
        if unknown:
            raise InvalidRequest(
                f"unknown state {', '.join(unknown)}; use one of {', '.join(s.value for s in JobState)}",
                fields={"state": "unknown state"},
            )
    count, page = _STATEMENTS[bool(states)]
    params: dict[str, Any] = {"user_id": user.id, "limit": limit, "offset": offset}
    if states:
        params["states"] = states
    total = session.scalar(count, params) or 0
    items = list(session.execute(page, params).all()) if total > offset else []
    attempts: dict[str, list[Any]] = {}
    if items:
        for a in session.execute(_PAGE_ATTEMPTS, {"job_ids": [j.id for j in items]}):
            attempts.setdefault(a.job_id, []).append(a)
    return items, attempts, int(total)


@dataclass
class CancelResult:
    job: JobModel
    ended: bool  # the job reached a terminal state now (live log readers must be told)


def cancel_job(session: Session, user: UserModel, job_id: str) -> CancelResult:
    """Queued or assigned: cancelled at once. Running: CANCELLING until the worker reports ``finish``."""
    for _ in range(5):  # conditional updates; retried if the job moved under us
        job = get_job(session, user, job_id)
        now = utcnow()
        if job.state in TERMINAL_JOB_STATES:
            raise Conflict(f"job {job_id} has already ended ({job.state})", code=ErrorCode.JOB_ENDED)
        if job.state == JobState.CANCELLING:
            return CancelResult(job, False)
        if job.state in (JobState.QUEUED, JobState.ASSIGNED, JobState.VALIDATING):
            # validating: no worker runs it any more; its replay still finishes and still judges the donor
            values = dict(state=JobState.CANCELLED, ended_at=now, updated_at=now, slots=None, pending_reason=None)
        else:
            values = dict(state=JobState.CANCELLING, updated_at=now)
        res = cast(sa.CursorResult[Any], session.execute(
            sa.update(JobModel)
            .where(JobModel.id == job.id, JobModel.state == job.state, JobModel.attempt == job.attempt)
            .values(**values)
        ))
        if res.rowcount != 1:
            session.rollback()
            continue
        if job.state == JobState.ASSIGNED:
            session.execute(
                sa.update(AttemptModel)
                .where(AttemptModel.job_id == job.id, AttemptModel.n == job.attempt)
                .values(state=AttemptState.CANCELLED, ended_at=now, error="cancelled before it started")
            )
        session.commit()
        session.expire_all()
        return CancelResult(get_job(session, user, job_id), values["state"] == JobState.CANCELLED)
    raise Conflict(f"job {job_id} kept changing; try again", code=ErrorCode.BUSY)


# ---------------------------------------------------------------- the job as the API shows it (contract models)


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


def worker_names(session: Session, jobs: list[Any]) -> dict[str, str]:
    """Worker id -> name for every worker the jobs (and their attempts) ran on, in one query."""
    ids = {j.worker_id for j in jobs if j.worker_id} | {a.worker_id for j in jobs for a in j.attempts if a.worker_id}
    if not ids:
        return {}
    return dict(session.execute(sa.select(WorkerModel.id, WorkerModel.name).where(WorkerModel.id.in_(ids))).all())


def _duration_s(job: Any) -> float | None:
    if job.started_at is None:
        return None
    return max(0.0, ((job.ended_at or utcnow()) - job.started_at).total_seconds())


def job_model_to_job(
    job: Any, estimate: queue_service.Estimate | None = None, names: dict[str, str] | None = None
) -> Job:
    """The job as the API shows it, from a ``JobModel`` or a page row carrying its ``attempts`` (``list_jobs``)."""
    request, request_warnings = stored_request(job.request)
    names = names or {}
    return Job(
        id=job.id,
        name=job.name,
        user_id=job.user_id,
        state=job.state,
        phase=phase_of(job, estimate.held if estimate else None),
        entrypoint=job.entrypoint,
        request=request,
        warnings=[str(w) for w in (job.warnings or [])] + request_warnings,
        bundle_size=job.bundle_size,
        attempt=job.attempt,
        worker_id=job.worker_id,
        worker_name=names.get(job.worker_id) if job.worker_id else None,
        queue_position=estimate.position if estimate else None,
        expected_start_at=estimate.expected_start_at if estimate else None,
        pending_reason=job.pending_reason if job.state in ("queued", "validating") else None,
        env={str(k): str(v) for k, v in (job.env or {}).items()},
        args=[str(a) for a in (job.args or [])],
        resubmitted_from=job.resubmitted_from,
        duration_s=_duration_s(job),
        failure=failure_of(job),
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        attempts=[
            Attempt(
                n=a.n, worker_id=a.worker_id, worker_name=names.get(a.worker_id) if a.worker_id else None,
                state=a.state, assigned_at=a.assigned_at, started_at=a.started_at,
                ended_at=a.ended_at, exit_code=a.exit_code, error=a.error, validation=a.validation,
            )
            for a in job.attempts
        ],
    )


def inspect_upload(filename: str, data: bytes, entrypoint: str | None, limits: ArchiveLimits) -> InspectResponse:
    """The DeviceGroups a script declares, read statically (never run); raises ``InvalidRequest`` with every problem."""
    bundle, problems = read_bundle(filename, data, entrypoint, limits)
    found = None if bundle is None else inspect_bundle_source(bundle.source, bundle.entrypoint, problems)
    if bundle is None or found is None:
        raise _problems_error(problems)
    return InspectResponse(
        request=JobRequest.model_validate(found.request()), warnings=found.warnings, entrypoint=bundle.entrypoint
    )


def views(session: Session, jobs: list[Any], ttl_s: float = 0.0) -> list[Job]:
    """The jobs as the API shows them: queue estimates (from a queue read at most ``ttl_s`` ago) and worker names
    for the whole list at once."""
    estimates = queue_service.estimates(session, jobs, ttl_s)
    names = worker_names(session, jobs)
    return [job_model_to_job(j, estimates.get(j.id), names) for j in jobs]


def submit(session: Session, storage: Storage, user: UserModel, sub: Submission, ttl_s: float = 0.0) -> Job:
    """Store a prepared submission and answer with the job as the API shows it (built from what was just
    inserted: no reload)."""
    job = create_job(session, storage, user, sub)
    return views(session, [job], ttl_s)[0]


def submit_upload(
    session: Session, storage: Storage, user: UserModel, filename: str, data: bytes, fields: dict[str, str],
    limits: ArchiveLimits, ttl_s: float = 0.0,
) -> Job:
    """``POST /jobs``: read the uploaded script or bundle with its form ``fields`` and store it as a job. One thread
    call for both: reading needs no connection, and the session takes one only at its first statement, after the
    bundle is stored."""
    sub = prepare(
        filename, data, fields.get("entrypoint"), fields.get("name"), fields.get("request"),
        fields.get("allow_unsandboxed"), limits, fields.get("launcher"), fields.get("env"), fields.get("args"),
    )
    return submit(session, storage, user, sub, ttl_s)


def job_view(session: Session, user: UserModel, job_id: str, ttl_s: float = 0.0) -> Job:
    """One job with its queue position and expected start (while queued)."""
    return views(session, [get_job(session, user, job_id)], ttl_s)[0]


def job_page(
    session: Session, user: UserModel, state: str | None, limit: int, offset: int, ttl_s: float = 0.0
) -> JobList:
    """A page of the user's jobs, newest first, with queue estimates from a fixed number of queries."""
    items, attempts, total = list_jobs(session, user, state, limit, offset)
    # plain rows (no ORM objects: half the API CPU of a page), each carrying its attempt rows
    jobs = [SimpleNamespace(**row._mapping, attempts=attempts.get(row.id, [])) for row in items]
    return JobList(items=views(session, jobs, ttl_s), total=total)


def cancel_job_view(session: Session, user: UserModel, job_id: str) -> tuple[Job, bool]:
    """Cancel; returns the job as shown and whether it ended at once (a running job is ``stopping`` first)."""
    res = cancel_job(session, user, job_id)
    return views(session, [res.job])[0], res.ended


def prepare_resubmit(session: Session, user: UserModel, job_id: str, body: ResubmitRequest) -> tuple[Submission, str]:
    """A new submission from a job of ``user``: its entrypoint, with ``body``'s overrides (a field left out keeps
    the original's), and the storage key of the bundle to copy (the caller reads it outside the transaction).
    Every problem is reported at once (422)."""
    original = get_job(session, user, job_id)
    problems: list[tuple[str, str]] = []
    env = (original.env or {}) if body.env is None else body.env
    args = (original.args or []) if body.args is None else body.args
    if body.env is not None:
        problems.extend(env_problems(body.env))
    if body.args is not None:
        problems.extend(args_problems(body.args))
    request = dict(original.request) if body.request is None else body.request.model_dump(exclude_none=True)
    if body.request is not None and not body.request.launcher:  # new devices, in the original's mode
        mode = "ray" if (original.request or {}).get("launcher") == "ray" else "local"
        request["launcher"] = decide_launcher(
            mode, request.get("device_groups") or [], mode_unread=False, ranks_unread=False, warnings=[]
        )
    warnings = [str(w) for w in original.warnings or []]
    if body.request is not None:
        warnings = [w for w in warnings if "DeviceGroup" not in w and "nproc" not in w]
    if problems:
        raise _problems_error(problems)
    inspection = Inspection(device_groups=list(request.get("device_groups") or []), warnings=warnings)
    sub = Submission(
        job_id=new_id(), bundle_zip=b"", entrypoint=original.entrypoint, inspection=inspection,
        request=request, name=(body.name or "").strip()[:255] or original.name, env=dict(env), args=list(args),
        resubmitted_from=original.id,
    )
    return sub, original.bundle_key


def has_ended(session: Session, job_id: str) -> bool:
    job = session.get(JobModel, job_id)
    return job is None or job.state in {x.value for x in TERMINAL_JOB_STATES}
