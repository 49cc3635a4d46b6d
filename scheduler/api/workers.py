from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter
from pydantic import ValidationError
from sqlalchemy.orm import Session

from contract import routes
from contract.tasks import worker_queue
from contract.workers import (
    AttemptRef,
    DevicesInUse,
    HardwareProbe,
    HeartbeatRequest,
    HeartbeatResponse,
    Isolation,
    OfferedGroup,
    RegisterWorkerRequest,
    RegisterWorkerResponse,
    Worker,
    WorkerList,
)
from scheduler.api.deps import CurrentUser, CurrentWorker, RuntimeDep, SessionDep, WorkerIdPath
from scheduler.services import events
from scheduler.services import workers as workers_service

router = APIRouter(tags=["workers"])


def _probe(raw: Any) -> HardwareProbe | None:
    """The stored probe; a row that does not parse (never written by this API) shows none rather than a 500."""
    try:
        return None if raw is None else HardwareProbe.model_validate(raw)
    except ValidationError:
        return None


@router.post(routes.WORKER_REGISTER, response_model=RegisterWorkerResponse)
async def register(body: RegisterWorkerRequest, token: CurrentWorker, rt: RuntimeDep) -> RegisterWorkerResponse:
    """Register the DeviceGroups this worker offers (worker token). Each offered group runs one job at a time.
    Registering again under the same name means the worker restarted: its unfinished jobs are requeued.
    ``isolation`` declares how it sandboxes jobs (default ``none``): jobs run only on sandboxed workers unless their
    owner opts out. ``probe`` (required) is what the worker measured: groups beyond it, or more ranks than
    ``MAX_RANKS_PER_WORKER``, are refused with 422 naming each problem."""
    s = rt.settings

    def work(session: Session) -> workers_service.Registration:
        return workers_service.register(
            session, token, name=body.name, hostname=body.hostname, device_groups=body.device_groups,
            lease_s=s.lease_s, max_attempts=s.max_attempts, isolation=body.isolation, probe=body.probe,
            max_ranks=s.max_ranks_per_worker,
        )

    reg = await rt.in_session(work, lane="worker")
    await rt.run(events.requeued, rt.worker_db, rt.redis, rt.storage, reg.requeued, lane="worker")
    return RegisterWorkerResponse(
        worker_id=reg.worker.id,
        queue=worker_queue(reg.worker.id),
        broker_url=s.broker_public_url or s.effective_redis_url,
        heartbeat_interval_s=s.heartbeat_interval_s,
        lease_s=s.lease_s,
    )


@router.post(routes.WORKER_HEARTBEAT, response_model=HeartbeatResponse)
async def heartbeat(
    worker_id: WorkerIdPath, body: HeartbeatRequest, token: CurrentWorker, rt: RuntimeDep
) -> HeartbeatResponse:
    """Renew the worker's lease; the answer lists attempts to stop (cancelled jobs, or stale attempts the
    worker still runs after being presumed lost). Served in the worker lane: user load never delays it."""
    cancel = await rt.in_session(
        workers_service.heartbeat, token, worker_id, body.running, rt.settings.lease_s, lane="worker"
    )
    return HeartbeatResponse(cancel=[AttemptRef(job_id=c.job_id, attempt=c.attempt) for c in cancel])


@router.get(routes.WORKERS, response_model=WorkerList)
def list_workers(_user: CurrentUser, session: SessionDep) -> WorkerList:
    """Donors and pools: offered DeviceGroups, isolation, state, last heartbeat, jobs run, the hardware probe, GPU-hours
    credited (validated) and pending (waiting for a spot check), reputation and validated attempts."""
    return WorkerList(
        items=[
            Worker(
                id=i.worker.id,
                name=i.worker.name,
                hostname=i.worker.hostname,
                owner=i.worker.owner,
                state=i.worker.state,
                device_groups=[OfferedGroup.model_validate(g) for g in i.worker.device_groups],
                # the column only ever holds what RegisterWorkerRequest validated (or the migration's "none")
                isolation=cast(Isolation, i.worker.isolation or "none"),
                registered_at=i.worker.registered_at,
                last_heartbeat_at=i.worker.last_heartbeat_at,
                running_jobs=i.running_jobs,
                devices_in_use=[DevicesInUse(job_id=j, group=g, devices=d) for j, g, d in i.devices_in_use],
                jobs_run=i.worker.jobs_run,
                gpu_hours=round(i.worker.gpu_seconds / 3600.0, 4),
                pending_gpu_hours=round(i.pending_seconds / 3600.0, 4),
                probe=_probe(i.worker.probe),
                reputation=round(i.worker.reputation, 4),
                validated_attempts=i.worker.validated_attempts,
                trusted=bool(i.worker.trusted),
            )
            for i in workers_service.list_workers(session)
        ]
    )
