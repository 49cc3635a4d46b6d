from __future__ import annotations

import asyncio
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from contract import routes
from contract.workers import (
    Assignment,
    AttemptRef,
    CanaryStateName,
    CanaryStatus,
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
from scheduler.api.deps import (
    AdminDep,
    CurrentUser,
    CurrentWorker,
    PrincipalDep,
    RuntimeDep,
    SessionDep,
    WorkerIdPath,
    forget_cached_tokens,
)
from scheduler.services import assignments, canary, events
from scheduler.services import workers as workers_service
from scheduler.services.requeue import Requeued
from scheduler.services.users import Principal
from scheduler.services.validation import ReplayPolicy

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
    One live worker per token: every registration gets a new worker id and supersedes the token's earlier ones
    (their unfinished jobs are requeued; their id answers 410 from then on). ``isolation`` declares how it
    sandboxes jobs (default ``none``): jobs run only on sandboxed workers unless their owner opts out. ``probe``
    (required) is what the worker measured: groups beyond it, or more ranks than ``MAX_RANKS_PER_WORKER``, are
    refused with 422 naming each problem. No broker credential is handed out: the worker claims its assignments
    over HTTP (``POST /workers/{id}/claim``). A new donor's worker (``CANARY_REQUIRED``) first gets a
    known-answer canary job, and no user's job until it passed (``GET /workers`` shows ``canary``)."""
    s = rt.settings

    def work(session: Session) -> workers_service.Registration:
        return workers_service.register(
            session, token, name=body.name, hostname=body.hostname, device_groups=body.device_groups,
            lease_s=s.lease_s, max_attempts=s.max_attempts, isolation=body.isolation, probe=body.probe,
            max_ranks=s.max_ranks_per_worker,
            approval_required=s.worker_approval_required, policy=ReplayPolicy.from_settings(s),
        )

    reg = await rt.in_session(work, lane="worker")
    if reg.canary:  # committed pending first, so no round gives it a user's job; the script goes to storage now
        await rt.in_session(canary.queue, rt.storage, reg.worker.id, s.canary_steps, lane="worker")
    await rt.run(events.requeued, rt.worker_db, rt.redis, rt.storage, reg.requeued, lane="worker")
    return RegisterWorkerResponse(
        worker_id=reg.worker.id,
        heartbeat_interval_s=s.heartbeat_interval_s,
        lease_s=s.lease_s,
        approved=reg.approved,
        claim_wait_s=s.claim_wait_s,
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


@router.post(
    routes.WORKER_CLAIM,
    response_model=Assignment,
    responses={204: {"description": "nothing was assigned to this worker within `wait` seconds; claim again"}},
)
async def claim(
    worker_id: WorkerIdPath,
    token: CurrentWorker,
    rt: RuntimeDep,
    wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait for an assignment (long poll)")] = 20.0,
) -> Assignment | Response:
    """The next attempt assigned to this worker, waiting up to ``wait`` seconds for one (204: none; claim again).
    Run it by starting it (``POST /attempts/{job_id}/{attempt}/start``): the start is the fence, so an assignment
    handed out twice runs once; two claims waiting at once (a pooled worker holds one per device) get different
    assignments. A worker awaiting approval gets 204; a superseded one 410; a revoked token 403.
    No database connection or thread is held while waiting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, rt.settings.claim_wait_s)
    while True:
        found = await rt.in_session(workers_service.next_assignments, token, worker_id, lane="worker")
        # a pooled worker holds several claims at once: each gets a different assignment
        got = await rt.waker.reserve(found, lambda a: (a.job_id, a.attempt))
        if got is not None:
            if len(found) > 1:
                await rt.waker.poke(worker_id)  # more are waiting: wake the worker's next claim now
            return Assignment(job_id=got.job_id, attempt=got.attempt)
        left = deadline - loop.time()
        if left <= 0:
            return Response(status_code=204)
        await rt.waker.wait(worker_id, min(left, assignments.POLL_S))


@router.post(routes.WORKER_REVOKE, status_code=204)
async def revoke(worker_id: WorkerIdPath, p: PrincipalDep, rt: RuntimeDep) -> Response:
    """Revoke the worker token this worker registered with (the admin, the token's owner, or the token itself):
    its workers get no more assignments, their next heartbeat or claim is 403 ``token_revoked``, and what they
    were running is requeued now."""
    requeued = await rt.in_session(_revoke, p, worker_id, rt.settings.max_attempts, lane="worker")
    forget_cached_tokens(rt)
    await rt.run(events.requeued, rt.worker_db, rt.redis, rt.storage, requeued, lane="worker")
    return Response(status_code=204)


def _revoke(session: Session, p: Principal, worker_id: str, max_attempts: int) -> list[Requeued]:
    return workers_service.revoke(session, p, worker_id, max_attempts=max_attempts)


@router.post(routes.WORKER_APPROVE, status_code=204)
async def approve(worker_id: WorkerIdPath, _admin: AdminDep, rt: RuntimeDep) -> Response:
    """Approve the worker token this worker registered with (admin token): its workers get jobs from the next
    dispatch round. Needed only where TWINKLE_SCHEDULER_REQUIRE_WORKER_APPROVAL is on (the production default)."""
    await rt.in_session(workers_service.approve, worker_id, lane="worker")
    return Response(status_code=204)


@router.get(routes.WORKERS, response_model=WorkerList)
def list_workers(user: CurrentUser, session: SessionDep) -> WorkerList:
    """Donors and pools: offered DeviceGroups, isolation, state, last heartbeat, jobs run, the hardware probe, GPU-hours
    credited (validated) and pending (waiting for a spot check), reputation and validated attempts. The devices
    each active job holds name the job only when it is the caller's."""
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
                approved=i.approved,
                status=i.status,
                superseded_by=i.worker.superseded_by,
                canary=None if i.worker.canary_state is None else CanaryStatus(
                    state=cast(CanaryStateName, i.worker.canary_state), detail=i.worker.canary_detail or ""),
            )
            for i in workers_service.list_workers(session, user.id)
        ]
    )
