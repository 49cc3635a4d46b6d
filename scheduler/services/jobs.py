"""Jobs: submit (validate everything, store, queue), list, get with queue position, cancel."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, cast

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.orm import Session, selectinload

from contract.archive import DEFAULT_LIMITS, ArchiveLimits
from contract.errors import ErrorCode
from contract.jobs import LAUNCHERS, Attempt, InspectResponse, Job, JobList, JobRequest, StoredRequest
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


def create_job(session: Session, storage: Storage, user: UserModel, sub: Submission) -> tuple[JobModel, int]:
    """Store the bundle, then insert the row; returns the job and its queue position. On any database error the
    bundle is removed again.

    The bundle goes first, before the session opens a transaction (no storage call inside one); then a single
    transaction reads the worker shapes (for the hold reason), inserts the job and counts the queue (for its
    position), four round trips where the API used to spend ten."""
    session.rollback()  # a caller's read transaction ends here: no storage call inside a DB transaction
    key = bundle_key(user.id, sub.job_id)
    size = storage.put_bytes(key, sub.bundle_zip)
    try:
        catalog = matching.ShapeCatalog(worker_views(session))
        needs = matching.needs_from_request(sub.request)
        reason = catalog.hold_reason(needs, bool(sub.request.get("allow_unsandboxed"))) or "waiting for the dispatcher"
        now = utcnow()
        job = JobModel(
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
            created_at=now,
            queued_at=now,
            updated_at=now,
            attempts=[],  # a new job has none: set, so that showing it loads nothing
        )
        session.add(job)
        session.flush()
        position = new_job_position(session, job)
        session.commit()
    except Exception:
        session.rollback()
        storage.delete(key)
        raise
    return job, position


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


def queue_positions(session: Session, jobs: Sequence[Any]) -> dict[str, int]:
    """1-based position of each queued job in round-robin dispatch order (users alternate, FIFO within one).

    An estimate: users take turns in the order of their oldest queued job (a tie goes to the lower user id),
    and every queued job counts, so it leaves out what the dispatcher also weighs (fair share by running
    jobs, held jobs that cannot run yet, jobs needing a slot no free worker has).

    A job that is the k-th (0-based, by ``created_at`` then ``id``) of its user waits behind its user's k
    earlier jobs and, from every other user, ``min(their queued count, k + 1)`` jobs if that user's turn comes
    first, else ``min(count, k)``. Jobs in ``jobs`` that are not queued (or no longer are) get no position.

    Two queries whatever the page size: each user's oldest queued job and queued count (one GROUP BY over the
    queued jobs), and k for the page's jobs (``row_number()`` over the queued jobs of the page's users only).
    With ``S(k) = sum over users of min(count, k)`` (the job's own user adds exactly k), the position is
    ``S(k) + (users whose turn comes first with count > k) + 1``.
    """
    page = {j.id for j in jobs if j.state == JobState.QUEUED}
    if not page:
        return {}
    heads = _queue_heads(session)
    users = sorted({j.user_id for j in jobs if j.id in page})
    k_of = {
        jid: (uid, int(k) - 1)
        for jid, uid, k in session.execute(_RANKED, {"users": users, "page": sorted(page)})
    }
    return _positions(heads, k_of)


_HEADS = (
    sa.select(_JOBS.c.user_id, sa.func.min(_JOBS.c.created_at), sa.func.count())
    .where(_JOBS.c.state == JobState.QUEUED.value)
    .group_by(_JOBS.c.user_id)
)
_RANKED_SUB = (
    sa.select(
        _JOBS.c.id,
        _JOBS.c.user_id,
        sa.func.row_number().over(partition_by=_JOBS.c.user_id, order_by=(_JOBS.c.created_at, _JOBS.c.id)).label("k"),
    )
    .where(_JOBS.c.state == JobState.QUEUED.value, _JOBS.c.user_id.in_(sa.bindparam("users", expanding=True)))
    .subquery()
)
_RANKED = sa.select(_RANKED_SUB.c.id, _RANKED_SUB.c.user_id, _RANKED_SUB.c.k).where(
    _RANKED_SUB.c.id.in_(sa.bindparam("page", expanding=True))
)


def _queue_heads(session: Session) -> list[Any]:
    """Each user with queued jobs: (user id, oldest queued job's ``created_at``, queued count)."""
    return list(session.execute(_HEADS).all())


def new_job_position(session: Session, job: JobModel) -> int:
    """The queue position of a job just inserted (and flushed) in this transaction, from one query: it is its
    user's newest queued job, so k is its user's queued count less one. Under concurrent submissions of one user
    the estimate may be off by the jobs not yet committed, as any position is an estimate."""
    heads = _queue_heads(session)
    count = next((int(n) for uid, _, n in heads if uid == job.user_id), 1)
    return _positions(heads, {job.id: (job.user_id, count - 1)})[job.id]


def _positions(heads: list[Any], k_of: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Positions from the users' heads and each job's (user, k): see ``queue_positions``."""
    order = [uid for uid, _, _ in sorted(heads, key=lambda h: (h[1], h[0]))]  # users by their oldest queued job
    count = {uid: int(n) for uid, _, n in heads}
    counts = sorted(count.values())
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)

    def s_of(k: int) -> int:  # sum over users of min(count, k)
        i = bisect.bisect_right(counts, k)
        return prefix[i] + k * (len(counts) - i)

    earlier: dict[str, list[int]] = {}  # user -> sorted queued counts of the users whose turn comes first
    out: dict[str, int] = {}
    for jid, (uid, k) in k_of.items():
        if uid not in earlier:
            earlier[uid] = sorted(count[u] for u in order[: order.index(uid)]) if uid in count else []
        before = earlier[uid]
        out[jid] = s_of(k) + len(before) - bisect.bisect_right(before, k) + 1
    return out


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


def job_model_to_job(job: Any, position: int | None = None, attempts: list[Any] | None = None) -> Job:
    """The job as the API shows it, from a ``JobModel`` or a row of the jobs table (``attempts``: its attempt
    rows, else ``job.attempts``)."""
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
        pending_reason=job.pending_reason if job.state in ("queued", "validating") else None,
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        attempts=[
            Attempt(
                n=a.n, worker_id=a.worker_id, state=a.state, assigned_at=a.assigned_at, started_at=a.started_at,
                ended_at=a.ended_at, exit_code=a.exit_code, error=a.error, validation=a.validation,
            )
            for a in (job.attempts if attempts is None else attempts)
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


def submit(session: Session, storage: Storage, user: UserModel, sub: Submission) -> Job:
    """Store a prepared submission and answer with the job as the API shows it (built from what was just
    inserted: no reload)."""
    job, position = create_job(session, storage, user, sub)
    return job_model_to_job(job, position)


def job_view(session: Session, user: UserModel, job_id: str) -> Job:
    """One job with its queue position (while queued)."""
    job = get_job(session, user, job_id)
    return job_model_to_job(job, queue_positions(session, [job]).get(job.id))


def job_page(session: Session, user: UserModel, state: str | None, limit: int, offset: int) -> JobList:
    """A page of the user's jobs, newest first, with queue positions from two queries."""
    items, attempts, total = list_jobs(session, user, state, limit, offset)
    positions = queue_positions(session, items)
    return JobList(
        items=[job_model_to_job(j, positions.get(j.id), attempts.get(j.id, [])) for j in items], total=total
    )


def cancel_job_view(session: Session, user: UserModel, job_id: str) -> tuple[Job, bool]:
    """Cancel; returns the job as shown and whether it ended at once (a running job is ``cancelling`` first)."""
    res = cancel_job(session, user, job_id)
    return job_model_to_job(res.job), res.ended


def has_ended(session: Session, job_id: str) -> bool:
    job = session.get(JobModel, job_id)
    return job is None or job.state in {x.value for x in TERMINAL_JOB_STATES}
