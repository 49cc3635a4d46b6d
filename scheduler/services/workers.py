"""Workers: register DeviceGroups (one live worker per token), heartbeat (renews the lease, delivers cancels),
claim assignments, revoke and approve tokens, list with usage and what each state means."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from contract.errors import ErrorCode
from contract.workers import AttemptRef, HardwareProbe, OfferedGroup
from scheduler.db import (
    ACTIVE_JOB_STATES,
    ApiTokenModel,
    CanaryState,
    JobModel,
    JobState,
    WorkerModel,
    WorkerState,
    new_id,
    utcnow,
)
from scheduler.errors import Forbidden, Gone, NotFound
from scheduler.services import canary, matching
from scheduler.services import users as users_service
from scheduler.services.hardware import check_claim
from scheduler.services.requeue import Requeued, requeue_active_jobs
from scheduler.services.usage import pending_seconds
from scheduler.services.users import Principal
from scheduler.services.validation import ReplayPolicy


@dataclass
class Registration:
    worker: WorkerModel
    requeued: list[Requeued] = field(default_factory=list)
    approved: bool = True
    canary: bool = False  # the worker is pending a known-answer canary: queue one (``canary.queue``) after commit


def _fresh_token(session: Session, token: ApiTokenModel) -> ApiTokenModel:
    """The token's row as the database has it now: the principal may come from the auth cache, and a revocation
    or an approval must take effect at the next heartbeat or claim, not when the cache entry runs out."""
    row = session.get(ApiTokenModel, token.id)
    if row is None or row.revoked_at is not None:
        users_service.raise_revoked()
    assert row is not None
    return row


def register(
    session: Session,
    token: ApiTokenModel,
    *,
    name: str,
    hostname: str,
    device_groups: list[OfferedGroup],
    lease_s: float,
    max_attempts: int,
    isolation: str = "none",
    probe: HardwareProbe | None = None,
    max_ranks: int = 64,
    approval_required: bool = False,
    policy: ReplayPolicy | None = None,
) -> Registration:
    """Register a worker of this token: always a new worker id, and the token's earlier workers are superseded.

    The offered groups must fit in ``probe`` and the rank cap (``scheduler.services.hardware``), else 422 and
    nothing changes. The probe is stored and shown by ``GET /workers``. The new row inherits the reputation and
    validated attempts of the token's latest earlier registration of this name (or of the token), so registering
    again never resets a donor's record.

    One live worker per token (per token and name for a pool token): whatever an earlier registration ran is
    gone (the daemon restarted) or belongs to another copy of the daemon using the same token (a stolen token, a
    second machine), so its active jobs are requeued as their next attempt now, and its id answers 410
    ``worker_superseded`` from then on. ``isolation`` is what the worker declares now. Without
    ``approval_required`` the token counts as approved from its first registration; with it, its workers get no
    jobs until an admin approves the token.

    Canary (``policy.canary_required``): an untrusted worker whose earlier row of the same token and name has not
    passed one is ``pending`` from this transaction on (no user's job before its canary passed); a passed or
    failed verdict carries over to the same token and name. The earlier rows' queued canaries are dropped.
    """
    check_claim(device_groups, probe, max_ranks=max_ranks)
    probed = probe.model_dump() if probe is not None else None
    now = utcnow()
    tok = _fresh_token(session, token)
    if tok.approved_at is None and not approval_required:
        tok.approved_at = now
    same = sa.select(WorkerModel).where(
        WorkerModel.token_id == token.id, WorkerModel.state.in_([WorkerState.LIVE, WorkerState.LOST])
    )
    if tok.pool:  # a pool's nodes share the token: each name has one live worker
        same = same.where(WorkerModel.name == name)
    previous = session.scalars(same).all()
    earlier = session.scalars(
        sa.select(WorkerModel).where(WorkerModel.token_id == token.id)
        .order_by((WorkerModel.name == name).desc(), WorkerModel.registered_at.desc()).limit(1)
    ).first()
    same_name = earlier is not None and earlier.name == name  # read before the superseded rows are renamed
    for old in previous:
        if old.name == name:  # (token, name) is unique: the superseded row gives the name up
            suffix = f" (superseded {old.id})"
            old.name = old.name[: 128 - len(suffix)] + suffix
    session.flush()
    worker = WorkerModel(
        id=new_id(),
        token_id=token.id,
        name=name,
        hostname=hostname or name,
        owner=token.owner,
        state=WorkerState.LIVE,
        device_groups=[g.model_dump() for g in device_groups],
        isolation=isolation,
        registered_at=now,
        last_heartbeat_at=now,
        lease_expires_at=now + dt.timedelta(seconds=lease_s),
        jobs_run=0,
        gpu_seconds=0.0,
        probe=probed,
        trusted=bool(tok.trusted),
    )
    if earlier is not None:  # a restart (or a copy) keeps the donor's record, never a fresh one
        worker.reputation, worker.validated_attempts = earlier.reputation, earlier.validated_attempts
    session.add(worker)
    session.flush()
    if same_name and earlier is not None and earlier.canary_state in (CanaryState.PASSED, CanaryState.FAILED):
        worker.canary_state, worker.canary_detail = earlier.canary_state, earlier.canary_detail
    # after the flush: the column defaults (a first registration's reputation) are filled in
    needs = policy is not None and canary.needs_canary(worker, policy)
    if needs:
        worker.canary_state, worker.canary_detail = CanaryState.PENDING, "pending: a known-answer canary is queued"
    requeued: list[Requeued] = []
    for old in previous:
        reason = (
            f"worker {name} registered again (restarted)" if old.name.startswith(f"{name} (superseded ")
            else f"worker {old.name} was superseded by a new registration ({name}) with the same token"
        )
        requeued += requeue_active_jobs(session, [old.id], reason=reason, max_attempts=max_attempts)
        old.state = WorkerState.SUPERSEDED
        old.superseded_by = worker.id
    canary.drop_for(session, [old.id for old in previous], f"worker {name} registered again")
    session.commit()
    return Registration(worker, requeued, approved=tok.approved_at is not None, canary=needs)


def get_own_worker(session: Session, token: ApiTokenModel, worker_id: str) -> WorkerModel:
    worker = session.get(WorkerModel, worker_id)
    if worker is None or worker.token_id != token.id:
        raise NotFound(
            f"no worker {worker_id!r} registered with this token; register first", code=ErrorCode.WORKER_NOT_FOUND
        )
    return worker


def usable_worker(session: Session, token: ApiTokenModel, worker_id: str) -> tuple[WorkerModel, ApiTokenModel]:
    """This token's worker ``worker_id``, if it may still heartbeat and claim: 403 ``token_revoked`` once the
    token is revoked, 410 ``worker_superseded`` once a newer registration of the token took over."""
    worker = get_own_worker(session, token, worker_id)
    tok = _fresh_token(session, token)
    if worker.state == WorkerState.REVOKED:
        users_service.raise_revoked()
    if worker.state == WorkerState.SUPERSEDED:
        raise Gone(
            f"worker {worker_id} was superseded by worker {worker.superseded_by}: a newer registration with the "
            "same worker token took over (one live worker per token). Stop this copy; give each machine its own "
            "token (twinkle-scheduler create-worker-token)",
            fields={"superseded_by": worker.superseded_by or ""},
        )
    return worker, tok


def next_assignments(session: Session, token: ApiTokenModel, worker_id: str, limit: int = 64) -> list[AttemptRef]:
    """The attempts assigned to this worker and not started yet, oldest first (none while the token awaits
    approval). Handing one out changes nothing here: the worker's ``start`` is the fence, and the claim route
    keeps two waiting claims from getting the same one (``assignments.Waker.reserve``)."""
    worker, tok = usable_worker(session, token, worker_id)
    if tok.approved_at is None:
        return []
    rows = session.execute(
        sa.select(JobModel.id, JobModel.attempt)
        .where(JobModel.worker_id == worker.id, JobModel.state == JobState.ASSIGNED)
        .order_by(JobModel.assigned_at, JobModel.id)
        .limit(limit)
    ).all()
    return [AttemptRef(job_id=job_id, attempt=n) for job_id, n in rows]


def heartbeat(
    session: Session, token: ApiTokenModel, worker_id: str, running: list[AttemptRef], lease_s: float
) -> list[AttemptRef]:
    """Renew the lease and answer which attempts to stop.

    Stop: attempts of jobs being cancelled, and anything the worker runs that is no longer the job's live
    attempt on this worker (requeued while the worker was unreachable, or cancelled while it was offline).
    """
    worker, _ = usable_worker(session, token, worker_id)
    now = utcnow()
    worker.last_heartbeat_at = now
    worker.lease_expires_at = now + dt.timedelta(seconds=lease_s)
    worker.state = WorkerState.LIVE
    cancel: dict[tuple[str, int], AttemptRef] = {}
    for job_id, n in session.execute(
        sa.select(JobModel.id, JobModel.attempt).where(
            JobModel.worker_id == worker.id, JobModel.state == JobState.CANCELLING
        )
    ):
        cancel[(job_id, n)] = AttemptRef(job_id=job_id, attempt=n)
    if running:
        ids = {r.job_id for r in running}
        live = {
            (jid, n)
            for jid, n in session.execute(
                sa.select(JobModel.id, JobModel.attempt).where(
                    JobModel.id.in_(ids),
                    JobModel.worker_id == worker.id,
                    JobModel.state.in_([s.value for s in ACTIVE_JOB_STATES if s != JobState.CANCELLING]),
                )
            )
        }
        for r in running:
            if (r.job_id, r.attempt) not in live:
                cancel[(r.job_id, r.attempt)] = r
    session.commit()
    return list(cancel.values())


@dataclass
class WorkerInfo:
    worker: WorkerModel
    running_jobs: int
    pending_seconds: float = 0.0  # device-seconds waiting for a spot check
    approved: bool = True
    status: str = ""
    # (job, group, devices); the job is None when it is not the viewer's (another user's job ids stay private)
    devices_in_use: list[tuple[str | None, str, list[int]]] = field(default_factory=list)


def _status(w: WorkerModel, tok: ApiTokenModel | None) -> str:
    if w.state == WorkerState.SUPERSEDED:
        return f"superseded by worker {w.superseded_by} (a newer registration with the same token)"
    if w.state == WorkerState.REVOKED or (tok is not None and tok.revoked_at is not None):
        return "token revoked"
    if tok is not None and tok.approved_at is None:
        return "awaiting approval"
    return w.state


def list_workers(session: Session, viewer_id: str | None = None) -> list[WorkerInfo]:
    """Every worker, with the devices each active job holds; only ``viewer_id``'s own jobs are named."""
    held: dict[str, list[tuple[str | None, Any]]] = {}
    for job_id, user_id, worker_id, slots in session.execute(
        sa.select(JobModel.id, JobModel.user_id, JobModel.worker_id, JobModel.slots)
        .where(JobModel.state.in_([s.value for s in ACTIVE_JOB_STATES]), JobModel.worker_id.is_not(None))
        .order_by(JobModel.assigned_at, JobModel.id)
    ):
        held.setdefault(worker_id, []).append((job_id if user_id == viewer_id else None, slots))
    workers = session.scalars(sa.select(WorkerModel).order_by(WorkerModel.registered_at)).all()
    pending = pending_seconds(session)
    tokens = {
        t.id: t
        for t in session.scalars(sa.select(ApiTokenModel).where(ApiTokenModel.id.in_({w.token_id for w in workers})))
    }
    out = []
    for w in workers:
        tok = tokens.get(w.token_id)
        approved = tok is not None and tok.approved_at is not None
        offers = tuple(matching.Offer.from_dict(g) for g in w.device_groups or [])
        in_use = [
            (job_id, offers[idx].name, list(devices))
            for job_id, slots in held.get(w.id, [])
            for idx, devices in matching.held_devices(slots, offers)
        ]
        out.append(WorkerInfo(w, len(held.get(w.id, [])), pending.get(w.id, 0.0), approved, _status(w, tok), in_use))
    return out


def _may_revoke(p: Principal, tok: ApiTokenModel) -> bool:
    """The admin; the donor, with the token itself; or the user named as the token's owner."""
    if p.kind == "admin":
        return True
    if p.kind == "worker":
        return p.token is not None and p.token.id == tok.id
    return p.user is not None and tok.owner is not None and p.user.name == tok.owner


def revoke(session: Session, p: Principal, worker_id: str, *, max_attempts: int) -> list[Requeued]:
    """Revoke the token ``worker_id`` registered with: none of its workers heartbeats, claims or writes again,
    and what they were running is requeued now (not after their lease)."""
    worker = session.get(WorkerModel, worker_id)
    if worker is None:
        raise NotFound(f"no worker {worker_id!r}", code=ErrorCode.WORKER_NOT_FOUND)
    tok = session.get(ApiTokenModel, worker.token_id)
    assert tok is not None  # the foreign key cascades
    if not _may_revoke(p, tok):
        raise Forbidden(
            f"only the admin or the token's owner ({tok.owner}) may revoke worker {worker_id}'s token",
            code=ErrorCode.FORBIDDEN,
        )
    now = utcnow()
    if tok.revoked_at is None:
        tok.revoked_at = now
    ids = list(session.scalars(
        sa.select(WorkerModel.id).where(
            WorkerModel.token_id == tok.id, WorkerModel.state.in_([WorkerState.LIVE, WorkerState.LOST])
        )
    ))
    requeued = requeue_active_jobs(session, ids, reason="the worker's token was revoked", max_attempts=max_attempts)
    canary.drop_for(session, ids, "the worker's token was revoked")
    if ids:
        session.execute(sa.update(WorkerModel).where(WorkerModel.id.in_(ids)).values(state=WorkerState.REVOKED))
    session.commit()
    return requeued


def approve(session: Session, worker_id: str) -> WorkerModel:
    """Approve the token ``worker_id`` registered with (admin): its workers, this one and later ones, get jobs."""
    worker = session.get(WorkerModel, worker_id)
    if worker is None:
        raise NotFound(f"no worker {worker_id!r}", code=ErrorCode.WORKER_NOT_FOUND)
    tok = session.get(ApiTokenModel, worker.token_id)
    assert tok is not None
    if tok.revoked_at is not None:
        users_service.raise_revoked()
    if tok.approved_at is None:
        tok.approved_at = utcnow()
    session.commit()
    return worker
