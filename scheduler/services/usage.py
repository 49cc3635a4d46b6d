"""What a worker is credited with: device-seconds of the GPUs its attempts held, granted after validation.

An attempt's device-seconds are its wall time as the platform measured it (``start`` to ``finish`` or to its
requeue) times the GPU devices of its slots, never more than the worker's probe counted. They are recorded on the
attempt (``attempts.device_seconds``) and:

- credited at once for a trusted pool (``credit = credited``, added to ``workers.gpu_seconds``);
- otherwise ``pending``, granted when the worker's next spot-checked attempt is validated (the check vouches for
  the work since the previous one) and ``forfeited`` when a check finds a mismatch.

Its own module because the requeue path, the finish path and the validation path all credit workers.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.db import AttemptModel, Credit, JobModel, WorkerModel
from scheduler.services import matching
from scheduler.services.matching import device_family

GPU_FAMILIES = ("cuda", "npu")


def _probed_devices(worker: WorkerModel) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for d in (worker.probe or {}).get("devices", []) or []:
        counts[device_family(str(d.get("device_type", "")))] += int(d.get("count", 1) or 0)
    return counts


def gpu_seconds_of(attempt: AttemptModel, job: JobModel, worker: WorkerModel | None, end: dt.datetime) -> float:
    """Device-seconds of GPU slots an attempt held (CPU slots do not count as GPU-hours), capped by the probe."""
    if attempt.started_at is None or worker is None or not job.slots:
        return 0.0
    offers = tuple(matching.Offer.from_dict(g) for g in worker.device_groups)
    ranks: dict[str, int] = defaultdict(int)
    for idx, devices in matching.held_devices(job.slots, offers):  # the devices held, not the whole group
        if offers[idx].family in GPU_FAMILIES:
            ranks[offers[idx].family] += len(devices)
    if worker.probe is not None:  # workers registered before probes keep their claim (nothing else to go on)
        probed = _probed_devices(worker)
        ranks = defaultdict(int, {fam: min(n, probed.get(fam, 0)) for fam, n in ranks.items()})
    return max(0.0, (end - attempt.started_at).total_seconds()) * sum(ranks.values())


def record_attempt_end(
    attempt: AttemptModel, job: JobModel, worker: WorkerModel | None, end: dt.datetime
) -> None:
    """Measure the ended attempt's device-seconds and credit them (trusted pool) or hold them pending."""
    seconds = gpu_seconds_of(attempt, job, worker, end)
    attempt.device_seconds = seconds
    if worker is None:
        return
    if worker.trusted:
        attempt.credit = Credit.CREDITED
        worker.gpu_seconds += seconds
    else:
        attempt.credit = Credit.PENDING


def grant_pending(session: Session, worker: WorkerModel) -> float:
    """A spot check of ``worker`` passed: credit every pending attempt of it. Returns the seconds granted."""
    rows = session.scalars(
        sa.select(AttemptModel).where(AttemptModel.worker_id == worker.id, AttemptModel.credit == Credit.PENDING)
    ).all()
    granted = sum(r.device_seconds for r in rows)
    for r in rows:
        r.credit = Credit.CREDITED
    worker.gpu_seconds += granted
    return granted


def forfeit_pending(session: Session, worker_id: str) -> float:
    """A spot check of the worker found a mismatch: nothing pending is ever credited."""
    rows = session.scalars(
        sa.select(AttemptModel).where(AttemptModel.worker_id == worker_id, AttemptModel.credit == Credit.PENDING)
    ).all()
    for r in rows:
        r.credit = Credit.FORFEITED
    return sum(r.device_seconds for r in rows)


def pending_seconds(session: Session) -> dict[str, float]:
    """worker id -> device-seconds waiting for validation."""
    return {
        str(wid): float(total or 0.0)
        for wid, total in session.execute(
            sa.select(AttemptModel.worker_id, sa.func.sum(AttemptModel.device_seconds))
            .where(AttemptModel.credit == Credit.PENDING, AttemptModel.worker_id.is_not(None))
            .group_by(AttemptModel.worker_id)
        )
    }
