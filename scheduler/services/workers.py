"""Workers: register DeviceGroups, heartbeat (renews the lease, delivers cancels), list with usage."""

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
    JobModel,
    JobState,
    WorkerModel,
    WorkerState,
    new_id,
    utcnow,
)
from scheduler.errors import NotFound
from scheduler.services import matching
from scheduler.services.hardware import check_claim
from scheduler.services.requeue import Requeued, requeue_active_jobs
from scheduler.services.usage import pending_seconds


@dataclass
class Registration:
    worker: WorkerModel
    requeued: list[Requeued] = field(default_factory=list)


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
) -> Registration:
    """Register (or re-register) the worker ``name`` of this token.

    A worker that registers again has restarted, so whatever it was running is gone: its active jobs are
    requeued as their next attempt now rather than after the lease runs out. ``isolation`` is what the worker
    declares now (it may have lost or gained its sandbox since the last time).

    The offered groups must fit in ``probe`` and the rank cap (``scheduler.services.hardware``), else 422 and
    nothing changes. The probe is stored and shown by ``GET /workers``.
    """
    check_claim(device_groups, probe, max_ranks=max_ranks)
    probed = probe.model_dump() if probe is not None else None
    now = utcnow()
    worker = session.scalar(sa.select(WorkerModel).where(WorkerModel.token_id == token.id, WorkerModel.name == name))
    groups = [g.model_dump() for g in device_groups]
    requeued: list[Requeued] = []
    if worker is None:
        worker = WorkerModel(
            id=new_id(),
            token_id=token.id,
            name=name,
            hostname=hostname or name,
            owner=token.owner,
            state=WorkerState.LIVE,
            device_groups=groups,
            isolation=isolation,
            registered_at=now,
            last_heartbeat_at=now,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
            jobs_run=0,
            gpu_seconds=0.0,
            probe=probed,
            trusted=bool(token.trusted),
        )
        session.add(worker)
    else:
        requeued = requeue_active_jobs(
            session, [worker.id], reason=f"worker {name} registered again (restarted)", max_attempts=max_attempts
        )
        worker.hostname = hostname or name
        worker.device_groups = groups
        worker.isolation = isolation
        worker.probe = probed
        worker.trusted = bool(token.trusted)
        worker.state = WorkerState.LIVE
        worker.registered_at = now
        worker.last_heartbeat_at = now
        worker.lease_expires_at = now + dt.timedelta(seconds=lease_s)
    session.commit()
    return Registration(worker, requeued)


def get_own_worker(session: Session, token: ApiTokenModel, worker_id: str) -> WorkerModel:
    worker = session.get(WorkerModel, worker_id)
    if worker is None or worker.token_id != token.id:
        raise NotFound(
            f"no worker {worker_id!r} registered with this token; register first", code=ErrorCode.WORKER_NOT_FOUND
        )
    return worker


def heartbeat(
    session: Session, token: ApiTokenModel, worker_id: str, running: list[AttemptRef], lease_s: float
) -> list[AttemptRef]:
    """Renew the lease and answer which attempts to stop.

    Stop: attempts of jobs being cancelled, and anything the worker runs that is no longer the job's live
    attempt on this worker (requeued while the worker was unreachable, or cancelled while it was offline).
    """
    worker = get_own_worker(session, token, worker_id)
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
    devices_in_use: list[tuple[str, str, list[int]]] = field(default_factory=list)  # (job, group, devices)


def list_workers(session: Session) -> list[WorkerInfo]:
    held: dict[str, list[tuple[str, Any]]] = {}
    for job_id, worker_id, slots in session.execute(
        sa.select(JobModel.id, JobModel.worker_id, JobModel.slots)
        .where(JobModel.state.in_([s.value for s in ACTIVE_JOB_STATES]), JobModel.worker_id.is_not(None))
        .order_by(JobModel.assigned_at, JobModel.id)
    ):
        held.setdefault(worker_id, []).append((job_id, slots))
    workers = session.scalars(sa.select(WorkerModel).order_by(WorkerModel.registered_at)).all()
    pending = pending_seconds(session)
    out = []
    for w in workers:
        offers = tuple(matching.Offer.from_dict(g) for g in w.device_groups or [])
        in_use = [
            (job_id, offers[idx].name, list(devices))
            for job_id, slots in held.get(w.id, [])
            for idx, devices in matching.held_devices(slots, offers)
        ]
        out.append(WorkerInfo(w, len(held.get(w.id, [])), pending.get(w.id, 0.0), in_use))
    return out
