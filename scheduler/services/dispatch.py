"""One dispatcher round (match queued jobs, commit assignments, then wake the workers' claims) and the reaper.

Order in a round, and why: (1) read workers, busy slots and the queue; (2) plan in memory (``matching``);
(3) write every assignment and attempt row in one transaction and COMMIT; (4) only then poke each assigned
worker's waiting claim (``scheduler.services.assignments``). A crash between (3) and (4) loses pokes, never jobs:
claims also poll the database, and the start deadline dispatches an unconfirmed assignment again. Only workers
whose token is approved and not revoked are matched.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.db import (
    ACTIVE_JOB_STATES,
    ApiTokenModel,
    AttemptModel,
    AttemptState,
    CanaryState,
    Database,
    JobKind,
    JobModel,
    JobState,
    WorkerModel,
    WorkerState,
    utcnow,
)
from scheduler.services import assignments, matching
from scheduler.services.liveness import LeaseGate, latest_heartbeat
from scheduler.services.requeue import Requeued, requeue_active_jobs, requeue_jobs
from scheduler.services.validation import ReplayPolicy, unverified_workers

log = logging.getLogger(__name__)

CHUNK = 500


@dataclass
class Sent:
    job_id: str
    attempt: int
    worker_id: str
    queued_at: dt.datetime


@dataclass
class RoundResult:
    assigned: list[Sent] = field(default_factory=list)
    waiting: int = 0
    plan_s: float = 0.0
    db_s: float = 0.0
    send_s: float = 0.0


def _chunks(seq: list, n: int = CHUNK) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def plan_round(
    session: Session, now: dt.datetime, policy: ReplayPolicy | None = None
) -> tuple[matching.Plan, dict[str, tuple]]:
    """Read what the matcher needs. Donors below ``policy.min_reputation`` are left out (they get no jobs); a
    replay job may go only to a trusted worker other than the donor it checks; a job never goes back to a worker
    whose attempt of it failed a spot check. A worker pending its canary gets only its canary (and a canary goes
    only to its worker); one that failed its canary gets nothing."""
    policy = policy or ReplayPolicy()
    workers_rows = session.execute(
        sa.select(
            WorkerModel.id, WorkerModel.device_groups, WorkerModel.state, WorkerModel.lease_expires_at,
            WorkerModel.isolation, WorkerModel.trusted, WorkerModel.reputation, WorkerModel.validated_attempts,
            WorkerModel.canary_state,
        )
        .join(ApiTokenModel, ApiTokenModel.id == WorkerModel.token_id)
        # superseded and revoked workers are gone for good; unapproved ones wait for an admin
        .where(
            WorkerModel.state.in_([WorkerState.LIVE, WorkerState.LOST]),
            ApiTokenModel.approved_at.is_not(None),
            ApiTokenModel.revoked_at.is_(None),
        )
    ).all()
    offers = {row[0]: tuple(matching.Offer.from_dict(g) for g in row[1]) for row in workers_rows}
    in_use: dict[str, dict[int, set[int]]] = {}
    for wid, slots in session.execute(
        sa.select(JobModel.worker_id, JobModel.slots).where(
            JobModel.state.in_([s.value for s in ACTIVE_JOB_STATES]), JobModel.worker_id.is_not(None)
        )
    ):
        for idx, devices in matching.held_devices(slots, offers.get(wid, ())):
            in_use.setdefault(wid, {}).setdefault(idx, set()).update(devices)
    views = [
        matching.WorkerView(
            wid,
            offers[wid],
            live=state == WorkerState.LIVE and lease > now,
            sandboxed=matching.is_sandboxed(isolation),
            trusted=bool(trusted) or (reputation >= policy.trusted_reputation
                                      and validated >= policy.trusted_min_validated),
            in_use={i: frozenset(d) for i, d in in_use.get(wid, {}).items()},
            reserved=canary == CanaryState.PENDING,
        )
        for wid, _groups, state, lease, isolation, trusted, reputation, validated, canary in workers_rows
        if (trusted or reputation >= policy.min_reputation) and canary != CanaryState.FAILED
    ]
    rows = session.execute(
        sa.select(
            JobModel.id, JobModel.user_id, JobModel.request, JobModel.attempt, JobModel.pending_reason,
            JobModel.queued_at, JobModel.kind, JobModel.replay_of, JobModel.replay_attempt, JobModel.canary_for,
        )
        .where(JobModel.state == JobState.QUEUED)
        .order_by(JobModel.created_at, JobModel.id)
    ).all()
    retried = [r[0] for r in rows if r[3] > 0]
    avoid: dict[str, frozenset[str]] = {}
    for chunk in _chunks(retried):
        avoid.update(unverified_workers(session, chunk))
    checked = [(r[7], r[8]) for r in rows if r[6] == JobKind.REPLAY and r[7] is not None]
    donors: dict[tuple[str, int], str] = {}
    for chunk in _chunks(checked):
        donors.update({
            (jid, n): str(wid)
            for jid, n, wid in session.execute(
                sa.select(AttemptModel.job_id, AttemptModel.n, AttemptModel.worker_id).where(
                    AttemptModel.job_id.in_({j for j, _ in chunk}), AttemptModel.worker_id.is_not(None)
                )
            )
        })
    needs_cache: dict[str, tuple[matching.Need, ...]] = {}
    queued = []
    info: dict[str, tuple] = {}
    for jid, uid, request, attempt, reason, queued_at, kind, replay_of, replay_attempt, canary_for in rows:
        key = repr(request)
        needs = needs_cache.get(key)
        if needs is None:
            needs = needs_cache[key] = matching.needs_from_request(request)
        replay = kind == JobKind.REPLAY
        donor = donors.get((replay_of, replay_attempt)) if replay else None
        queued.append(matching.QueuedJob(
            jid, uid, needs, bool(request.get("allow_unsandboxed")), trusted_only=replay,
            avoid=frozenset({donor}) if donor else avoid.get(jid, frozenset()),
            # a canary goes to its worker only ("?" matches no worker: a row without one is never placed)
            only=(canary_for or "?") if kind == JobKind.CANARY else None,
        ))
        info[jid] = (attempt, reason, queued_at)
    users = list({q.user_id for q in queued})
    priority: dict[str, tuple] = {}
    if users:
        active = dict(session.execute(
            sa.select(JobModel.user_id, sa.func.count())
            .where(JobModel.state.in_([s.value for s in ACTIVE_JOB_STATES]))
            .group_by(JobModel.user_id)
        ).all())
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        for uid, last in session.execute(
            sa.select(JobModel.user_id, sa.func.max(AttemptModel.assigned_at))
            .join(AttemptModel, AttemptModel.job_id == JobModel.id)
            .group_by(JobModel.user_id)
        ):
            # Fair share across rounds: fewest running jobs first, then whoever was served longest ago.
            last = last if last is None or last.tzinfo else last.replace(tzinfo=dt.UTC)
            priority[uid] = (active.get(uid, 0), last or epoch)
    return matching.plan(views, queued, priority), info


def dispatch_round(db: Database, r: redis.Redis | None, policy: ReplayPolicy | None = None) -> RoundResult:
    """One round; ``r`` is the platform's Redis, used only to wake the assigned workers' claims (``None``:
    claims find their assignments by polling)."""
    result = RoundResult()
    now = utcnow()
    t0 = time.perf_counter()
    with db.session() as session:
        plan, info = plan_round(session, now, policy)
        result.plan_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        if plan.assignments:
            # Guarded on state='queued': a job cancelled since the read is left alone.
            session.execute(
                sa.update(cast(sa.Table, JobModel.__table__))
                .where(JobModel.__table__.c.id == sa.bindparam("b_id"), JobModel.__table__.c.state == JobState.QUEUED)
                .values(
                    state=JobState.ASSIGNED,
                    worker_id=sa.bindparam("b_worker"),
                    slots=sa.bindparam("b_slots", type_=sa.JSON),
                    attempt=sa.bindparam("b_attempt"),
                    assigned_at=now,
                    updated_at=now,
                    pending_reason=None,
                ),
                [
                    dict(b_id=a.job_id, b_worker=a.worker_id, b_slots=a.stored_slots(), b_attempt=info[a.job_id][0] + 1)
                    for a in plan.assignments
                ],
            )
            assigned = {a.job_id: a for a in plan.assignments}
            confirmed: set[str] = set()
            for chunk in _chunks(list(assigned)):
                confirmed.update(
                    session.scalars(
                        sa.select(JobModel.id).where(
                            JobModel.id.in_(chunk), JobModel.state == JobState.ASSIGNED, JobModel.assigned_at == now
                        )
                    )
                )
            attempts = []
            for jid in confirmed:
                a = assigned[jid]
                n = info[jid][0] + 1
                attempts.append(dict(job_id=jid, n=n, worker_id=a.worker_id, state=AttemptState.ASSIGNED,
                                     assigned_at=now, logs_persisted=False))
                result.assigned.append(Sent(jid, n, a.worker_id, info[jid][2]))
            if attempts:
                session.execute(sa.insert(AttemptModel), attempts)
        changed = [
            dict(b_id=jid, b_reason=reason)
            for jid, reason in plan.reasons.items()
            if info[jid][1] != reason
        ]
        if changed:
            session.execute(
                sa.update(cast(sa.Table, JobModel.__table__))
                .where(JobModel.__table__.c.id == sa.bindparam("b_id"), JobModel.__table__.c.state == JobState.QUEUED)
                .values(pending_reason=sa.bindparam("b_reason")),
                changed,
            )
        session.commit()
        result.waiting = len(plan.reasons)
        result.db_s = time.perf_counter() - t1
    # Committed; now the network calls.
    t2 = time.perf_counter()
    assignments.wake(r, (s.worker_id for s in result.assigned))
    result.send_s = time.perf_counter() - t2
    observe_latency(result.assigned)
    return result


def observe_latency(sent: list[Sent]) -> None:
    from scheduler.observability import DISPATCH_LATENCY

    now = utcnow()
    for s in sent:
        DISPATCH_LATENCY.observe(max(0.0, (now - s.queued_at).total_seconds()))


@dataclass
class ReapResult:
    lost_workers: list[str] = field(default_factory=list)
    requeued: list[Requeued] = field(default_factory=list)


def reap(
    db: Database, *, start_deadline_s: float, max_attempts: int, gate: LeaseGate | None = None
) -> ReapResult:
    """Mark workers whose lease expired as lost and requeue their jobs; requeue assignments nobody started.

    With a ``gate`` (the dispatcher always passes one), leases expire only while it has seen heartbeats
    possible for a full lease (``scheduler.services.liveness``): an API or database outage never requeues."""
    result = ReapResult()
    now = utcnow()
    with db.session() as session:
        expire = True
        if gate is not None:
            try:
                gate.observe(latest_heartbeat(session), now)
            except Exception:
                gate.reset()
                raise
            expire = gate.may_expire()
        lost = [] if not expire else list(
            session.scalars(
                sa.select(WorkerModel.id).where(
                    WorkerModel.state == WorkerState.LIVE, WorkerModel.lease_expires_at < now
                )
            )
        )
        if lost:
            session.execute(
                sa.update(WorkerModel)
                .where(WorkerModel.id.in_(lost), WorkerModel.lease_expires_at < now)
                .values(state=WorkerState.LOST)
            )
            result.lost_workers = lost
            result.requeued += requeue_active_jobs(
                session, lost, reason="the worker stopped heartbeating (lease expired)", max_attempts=max_attempts
            )
        deadline = now - dt.timedelta(seconds=start_deadline_s)
        unstarted = session.scalars(
            sa.select(JobModel)
            .where(JobModel.state == JobState.ASSIGNED, JobModel.assigned_at < deadline)
            .with_for_update()
        ).all()
        if unstarted:
            result.requeued += requeue_jobs(
                session,
                list(unstarted),
                reason=f"the worker did not start it within {start_deadline_s:g}s",
                attempt_state=AttemptState.EXPIRED,
                max_attempts=max_attempts,
            )
        session.commit()
    return result


def expire_replays(db: Database, policy: ReplayPolicy) -> list[Requeued]:
    """Cancel replays that no trusted worker took within ``policy.wait_s``: each checked job succeeds unvalidated
    (``validation.conclude``'s inconclusive branch: its donor earns no credit from it, and loses no reputation)."""
    from scheduler.services import validation

    out: list[Requeued] = []
    now = utcnow()
    with db.session() as session:
        for replay in validation.stale_replays(session, policy, now):
            reason = f"no trusted worker took it within {policy.wait_s:g}s"
            replay.state, replay.ended_at, replay.updated_at = JobState.CANCELLED, now, now
            replay.pending_reason, replay.error = None, reason
            verdict = validation.conclude(session, replay, reason, policy)
            if verdict is not None:
                out.append(Requeued(verdict.job_id, verdict.user_id, verdict.attempt, verdict.job_state,
                                    verdict.message))
        session.commit()
    return out


def expire_canaries(db: Database, policy: ReplayPolicy) -> list[Requeued]:
    """Fail the canaries not finished ``policy.canary_timeout_s`` after their assignment; their workers fail the
    check (``scheduler.services.canary.expire``)."""
    from scheduler.services import canary

    with db.session() as session:
        out = canary.expire(session, policy.canary_timeout_s)
        session.commit()
    return out
