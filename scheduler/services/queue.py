"""Where a queued job stands: its place among the jobs that compete for the same workers, and when it may start.

Both are estimates shown to users (``Job.queue_position``, ``Job.expected_start_at``), never used to dispatch.

- **Competitors.** Two queued jobs compete when some live worker could run both (same device family, enough
  ranks and memory, sandboxed unless the owner opted out), or when no live worker could run either (both wait
  for any worker). A held job (``pending_reason`` starting ``held:``, the dispatcher's verdict that no registered
  worker could run it) competes with nobody and has no position: it cannot run until a worker joins.
- **Position.** Among a job's competitors, the dispatcher's order: users take turns in the order of their oldest
  queued job, each user first in, first out. A job that is the k-th (0-based) of its user is preceded by
  ``min(count, k)`` jobs of every user, plus one more job of each user whose turn comes first and who has more
  than k.
- **Expected start** (Slurm's ``squeue --start``): every slot of the workers that could run the job is a server;
  a slot running a job frees up when that job reaches the mean duration of recent jobs (now, if it is past it);
  each job ahead takes the earliest free slot for one mean duration; the job starts when the earliest slot is
  free after that. No finished job to learn from: no estimate.

Cost: three queries (queued jobs, live workers with their running jobs, recent durations) whatever the page
size; the per-job work is over the distinct resource requests of the page.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.db import ACTIVE_JOB_STATES, JobModel, JobState, WorkerModel, WorkerState, utcnow
from scheduler.services import matching

__all__ = ["HELD_PREFIX", "Estimate", "estimates", "is_held", "mean_duration_s"]

HELD_PREFIX = "held:"
RECENT_JOBS = 50  # the mean duration is taken over this many latest finished jobs


def is_held(pending_reason: str | None) -> bool:
    return bool(pending_reason and pending_reason.startswith(HELD_PREFIX))


@dataclass(frozen=True)
class Estimate:
    position: int | None
    expected_start_at: dt.datetime | None
    held: bool


@dataclass
class _Queued:
    id: str
    user_id: str
    key: tuple[Any, ...]  # (created_at, id): the order within a user
    fits: dict[str, int]  # live worker -> how many jobs of its request the worker could run at once
    signature: frozenset[str]  # live workers that could run it


@dataclass
class _Worker:
    view: matching.WorkerView
    running: list[dt.datetime]  # when each of its active jobs started (or was assigned)


def mean_duration_s(session: Session) -> float | None:
    """Mean run time (start to end) of the latest finished jobs, platform-wide; ``None`` without any."""
    rows = session.execute(
        sa.select(JobModel.started_at, JobModel.ended_at)
        .where(JobModel.state.in_((JobState.SUCCEEDED, JobState.FAILED)), JobModel.started_at.is_not(None),
               JobModel.ended_at.is_not(None))
        .order_by(JobModel.ended_at.desc())
        .limit(RECENT_JOBS)
    ).all()
    durations = [(end - start).total_seconds() for start, end in rows if start is not None and end is not None]
    return sum(durations) / len(durations) if durations else None


def _live_workers(session: Session) -> dict[str, _Worker]:
    workers = {
        wid: _Worker(
            matching.WorkerView(
                wid, tuple(matching.Offer.from_dict(g) for g in groups), sandboxed=matching.is_sandboxed(isolation)
            ),
            [],
        )
        for wid, groups, isolation in session.execute(
            sa.select(WorkerModel.id, WorkerModel.device_groups, WorkerModel.isolation).where(
                WorkerModel.state == WorkerState.LIVE
            )
        )
    }
    for wid, started, assigned in session.execute(
        sa.select(JobModel.worker_id, JobModel.started_at, JobModel.assigned_at).where(
            JobModel.state.in_(ACTIVE_JOB_STATES), JobModel.worker_id.is_not(None)
        )
    ):
        if wid in workers:
            workers[wid].running.append(started or assigned or utcnow())
    return workers


def _fits(worker: matching.WorkerView, needs: tuple[matching.Need, ...], allow_unsandboxed: bool) -> int:
    """How many of ``needs``-shaped jobs the worker could run at once (0: none)."""
    if not (worker.sandboxed or allow_unsandboxed) or matching.fit_groups(worker.offers, needs) is None:
        return 0
    if len(needs) == 1:
        return sum(1 for o in worker.offers if matching.offer_fits(o, needs[0]))
    return 1


def _by_user(competitors: list[_Queued]) -> dict[str, list[tuple[Any, ...]]]:
    by_user: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for c in competitors:
        by_user[c.user_id].append(c.key)
    for keys in by_user.values():
        keys.sort()
    return by_user


def _position(job: _Queued, by_user: dict[str, list[tuple[Any, ...]]]) -> int:
    k = bisect.bisect_left(by_user[job.user_id], job.key)
    turn = sorted(by_user, key=lambda u: (by_user[u][0][0], u))  # users by their oldest competing job (tie: id)
    mine = turn.index(job.user_id)
    ahead = sum(min(len(keys), k) for keys in by_user.values())
    ahead += sum(1 for u in turn[:mine] if len(by_user[u]) > k)
    return ahead + 1


def _expected_start(
    ahead: int, slots: list[tuple[int, list[dt.datetime]]], mean_s: float | None, now: dt.datetime
) -> dt.datetime | None:
    if mean_s is None or not slots:
        return None
    free: list[float] = []  # seconds from now until each slot is free
    for capacity, running in slots:
        busy = sorted(max(0.0, mean_s - (now - started).total_seconds()) for started in running)[:capacity]
        free.extend(busy + [0.0] * (capacity - len(busy)))
    heapq.heapify(free)
    for _ in range(ahead):
        heapq.heapreplace(free, free[0] + mean_s)
    return now + dt.timedelta(seconds=free[0])


class _Snapshot:
    """What every estimate reads, taken once: live workers, the queued jobs, the mean duration, and (filled as
    pages ask) the competitors of each signature by user. Shared for ``ttl_s`` by the requests of one process."""

    def __init__(self, session: Session) -> None:
        self.taken = time.monotonic()
        self.workers = _live_workers(session)
        self._fits: dict[str, dict[str, int]] = {}
        self.queued = [
            self.queued_job(jid, uid, created, raw)
            for jid, uid, created, raw, reason in session.execute(
                sa.select(JobModel.id, JobModel.user_id, JobModel.created_at, sa.cast(JobModel.request, sa.Text),
                          JobModel.pending_reason)
                .where(JobModel.state == JobState.QUEUED)
            )
            if not is_held(reason)
        ]
        self.by_id = {q.id: q for q in self.queued}
        self.mean_s = mean_duration_s(session)
        self._groups: dict[frozenset[str], dict[str, list[tuple[Any, ...]]]] = {}
        self._lock = threading.Lock()

    def fits(self, raw: str | None) -> dict[str, int]:
        """Live worker -> how many jobs of this request it could run at once, keyed by the stored JSON text: a
        queue holds few distinct requests, so most rows are never decoded."""
        hit = self._fits.get(raw or "")
        if hit is None:
            req = json.loads(raw) if raw else {}
            req = req if isinstance(req, dict) else {}
            needs = matching.needs_from_request(req)
            allow = bool(req.get("allow_unsandboxed"))
            hit = self._fits[raw or ""] = {
                wid: n for wid, w in self.workers.items() if (n := _fits(w.view, needs, allow))
            }
        return hit

    def queued_job(self, jid: str, uid: str, created: Any, raw: str | None) -> _Queued:
        fits = self.fits(raw)
        return _Queued(jid, uid, (created, jid), fits, frozenset(fits))

    def competitors(self, signature: frozenset[str]) -> dict[str, list[tuple[Any, ...]]]:
        """The queued jobs competing with a job of ``signature``, by user, each user's in order."""
        with self._lock:
            found = self._groups.get(signature)
            if found is None:
                # jobs no live worker fits now (none registered yet, say) wait for the same thing: any worker
                found = self._groups[signature] = _by_user(
                    [q for q in self.queued if q.signature & signature or not (q.signature or signature)]
                )
            return found


_snapshots: dict[str, _Snapshot] = {}  # database URL -> the latest snapshot of this process
_retaking: set[str] = set()  # database URLs whose snapshot a request of this process is taking again now
_snapshots_lock = threading.Lock()


def forget_snapshots() -> None:
    """Drop this process's snapshots: the next estimate reads the queue again."""
    with _snapshots_lock:
        _snapshots.clear()


def _snapshot(session: Session, ttl_s: float) -> _Snapshot:
    """The process's snapshot of the queue, taken again once it is ``ttl_s`` old, by one request only: while it
    reads, the others keep answering from the old one (at most one read's time staler). Without this, every
    request of a busy API that arrived in that moment read the whole queue at once (5 reads per expiry, 7 % of
    the API's CPU at 1,000 clients)."""
    if ttl_s <= 0:
        return _Snapshot(session)
    key = str(session.get_bind().engine.url)
    with _snapshots_lock:
        snap = _snapshots.get(key)
        if snap is not None and (time.monotonic() - snap.taken <= ttl_s or key in _retaking):
            return snap
        _retaking.add(key)  # with no snapshot at all (a cold start), racing requests may each take one: harmless
    try:
        snap = _Snapshot(session)
        with _snapshots_lock:
            _snapshots[key] = snap
    finally:
        with _snapshots_lock:
            _retaking.discard(key)
    return snap


def estimates(session: Session, jobs: list[Any], ttl_s: float = 0.0) -> dict[str, Estimate]:
    """Position, expected start and whether it is held, for each queued job of ``jobs`` (others are left out).

    ``ttl_s`` > 0: the queue, the workers and the competitor groups are read at most once per ``ttl_s`` per
    process and shared (``QUEUE_ESTIMATE_TTL_S``), so a request costs what its page costs, not what the whole
    queue does. A job queued since the snapshot (the one just submitted, say) is placed last among its user's."""
    page = [j for j in jobs if j.state == JobState.QUEUED]
    if not page:
        return {}
    snap = _snapshot(session, ttl_s)
    now = utcnow()
    out: dict[str, Estimate] = {}
    for job in page:
        me = snap.by_id.get(job.id)
        if me is None:
            if is_held(job.pending_reason):  # the dispatcher found no worker that could ever run it
                out[job.id] = Estimate(None, None, True)
                continue
            me = snap.queued_job(job.id, job.user_id, job.created_at, json.dumps(job.request))
        by_user = snap.competitors(me.signature)
        if me.id not in snap.by_id:  # newer than the snapshot: after the user's other competing jobs
            by_user = {**by_user, me.user_id: [*by_user.get(me.user_id, []), me.key]}
        position = _position(me, by_user)
        slots = [(me.fits[wid], snap.workers[wid].running) for wid in me.signature]
        out[job.id] = Estimate(position, _expected_start(position - 1, slots, snap.mean_s, now), False)
    return out
