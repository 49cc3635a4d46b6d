"""Known-answer canaries: a new donor's worker runs a tiny training whose loss curve the platform computed itself,
before it gets any user's job (issue 13, item 4).

A donor is a stranger: it may report results without running anything. Spot checks (``validation``) catch that
after the fact, on users' jobs; the canary catches it before. Flow:

1. ``workers.register`` of an untrusted worker (``CANARY_REQUIRED``) whose row has no passed canary (a restart of
   the same token and name keeps its verdict) marks it ``pending`` in the registration's transaction, so no
   dispatch round can hand it a user's job first. After commit the API calls ``queue``: fresh parameters drawn
   with ``SystemRandom`` (a seed for the data, the learning rate, the sizes), the script with the data written
   into it as float64 literals, the expected curve computed here in plain Python (``expected_curve``), and a job
   (``kind='canary'``, owned by the ``platform`` user, ``canary_for`` = the worker) that the matcher places only
   on that worker, which gets nothing else while it is pending.
2. The script trains linear regression with ``torch.optim.SGD`` in float64 on the device the worker offers
   (``cuda`` if it offers GPUs) and writes each step's loss to ``TWINKLE_METRICS_FILE``, the file real jobs
   write through twinkle's ``calculate_metric``: the worker's tailing and ``POST /metrics`` are checked too.
3. ``judge`` at its finish: the reported losses must match the curve within ``RTOL`` (``validation.compare``).
   Pass: ``passed``. A mismatch, no losses, a failed exit, or no finish within ``CANARY_TIMEOUT_S``
   (``expire``): ``failed``, the reason in ``canary_detail`` (``GET /workers``), and its reputation drops to 0,
   so it gets no jobs. A canary lost with its worker (lease expired) is queued again by the reaper; a worker
   that registers again gets a fresh canary (the old one is dropped, ``drop_for``).

Why a recorded answer is useless: every canary's data, learning rate and sizes are new, and the curve never leaves
the platform. Linear regression in float64 is deterministic to ~1e-15 on CPU and GPU alike, so the tolerance is
tight and still never fails an honest worker.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.db import (
    ACTIVE_JOB_STATES,
    AttemptModel,
    AttemptState,
    CanaryState,
    JobKind,
    JobModel,
    JobState,
    UserModel,
    WorkerModel,
    new_id,
    utcnow,
)
from scheduler.services import matching
from scheduler.services.requeue import Requeued
from scheduler.services.validation import ReplayPolicy, compare, training_records
from scheduler.storage import Storage, bundle_key

PLATFORM_USER = "platform"  # owns the platform's own jobs; they are never in a user's job list
ENTRYPOINT = "canary.py"
RTOL = 1e-6  # float64 linear regression agrees to ~1e-15 between torch (CPU or CUDA) and this module
_rng = random.SystemRandom()  # the parameters must not be predictable from outside


@dataclass(frozen=True)
class Case:
    """One canary's problem: ``rows`` x ``features`` data, a start point, a learning rate, ``steps`` SGD steps."""

    x: tuple[tuple[float, ...], ...]
    y: tuple[float, ...]
    w0: tuple[float, ...]
    lr: float
    steps: int
    device: str  # "cuda" or "cpu": where the script trains (a worker offering GPUs is checked on one)


def draw(steps: int, device: str = "cpu", rng: random.Random | None = None) -> Case:
    """Fresh parameters: the seed, sizes and learning rate come from ``SystemRandom`` unless ``rng`` is given."""
    rng = rng or _rng
    data = random.Random(rng.getrandbits(64))
    rows, features = rng.randint(12, 32), rng.randint(3, 6)
    truth = [data.uniform(-2.0, 2.0) for _ in range(features)]
    x = tuple(tuple(data.uniform(-1.0, 1.0) for _ in range(features)) for _ in range(rows))
    y = tuple(sum(a * t for a, t in zip(row, truth, strict=True)) + data.gauss(0.0, 0.1) for row in x)
    w0 = tuple(data.uniform(-1.0, 1.0) for _ in range(features))
    return Case(x, y, w0, lr=rng.uniform(0.02, 0.15), steps=steps, device=device)


def expected_curve(case: Case) -> list[float]:
    """The loss before each SGD step (mean squared error of ``x @ w + b``, ``b`` from 0), in plain float64."""
    w, b, n = list(case.w0), 0.0, len(case.x)
    out = []
    for _ in range(case.steps):
        r = [sum(a * wj for a, wj in zip(row, w, strict=True)) + b - yi for row, yi in zip(case.x, case.y, strict=True)]
        out.append(sum(ri * ri for ri in r) / n)
        grad_w = [2.0 / n * sum(ri * row[j] for ri, row in zip(r, case.x, strict=True)) for j in range(len(w))]
        grad_b = 2.0 / n * sum(r)
        w = [wj - case.lr * g for wj, g in zip(w, grad_w, strict=True)]
        b -= case.lr * grad_b
    return out


_SCRIPT = '''"""Twinkle canary: a known-answer check of this worker. The platform computed this curve itself."""
import json
import os
import sys
import time
from pathlib import Path

import torch

DEVICE = {device!r}
LR = {lr!r}
STEPS = {steps!r}
X = {x!r}
Y = {y!r}
W0 = {w0!r}

sink = os.environ.get("TWINKLE_METRICS_FILE")
if not sink:
    sys.exit("TWINKLE_METRICS_FILE is not set: the worker gave this job no metrics file")
dev = torch.device(DEVICE)
x = torch.tensor(X, dtype=torch.float64, device=dev)
y = torch.tensor(Y, dtype=torch.float64, device=dev)
w = torch.tensor(W0, dtype=torch.float64, device=dev, requires_grad=True)
b = torch.zeros((), dtype=torch.float64, device=dev, requires_grad=True)
opt = torch.optim.SGD([w, b], lr=LR)
Path(sink).parent.mkdir(parents=True, exist_ok=True)
for step in range(1, STEPS + 1):
    opt.zero_grad()
    loss = ((x @ w + b - y) ** 2).mean()
    loss.backward()
    opt.step()
    with open(sink, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({{"step": step, "ts": time.time(), "metrics": {{"loss": loss.item()}}}}) + "\\n")
print(f"canary: {{STEPS}} steps on {{dev}}, last loss {{loss.item():.6g}}")
'''


def script(case: Case) -> str:
    """The job's source: the data as float64 literals (``repr`` round-trips exactly), so the worker needs nothing
    but torch and the metrics file."""
    return _SCRIPT.format(device=case.device, lr=case.lr, steps=case.steps, x=case.x, y=case.y, w0=case.w0)


def needs_canary(worker: WorkerModel, policy: ReplayPolicy) -> bool:
    """A donor's worker that has not passed one; trusted pools never, and a banned donor gets no canary either
    (it would wait for a worker that gets nothing)."""
    if not policy.canary_required or worker.trusted or worker.canary_state == CanaryState.PASSED:
        return False
    return worker.canary_state != CanaryState.FAILED and policy.may_work(worker)


def device_of(device_groups: Sequence[Any]) -> str:
    """``cuda`` if the worker offers a CUDA group (the canary then runs on one of its GPUs), else ``cpu``."""
    families = {matching.Offer.from_dict(g).family for g in device_groups or ()}
    return "cuda" if "cuda" in families else "cpu"


def platform_user_id(session: Session) -> str:
    """The ``platform`` user's id, created on first use (two registrations racing: one insert wins)."""
    found = session.scalar(sa.select(UserModel.id).where(UserModel.name == PLATFORM_USER))
    if found is not None:
        return str(found)
    uid = new_id()
    try:
        with session.begin_nested():
            session.add(UserModel(id=uid, name=PLATFORM_USER, created_at=utcnow()))
    except IntegrityError:
        return str(session.scalar(sa.select(UserModel.id).where(UserModel.name == PLATFORM_USER)))
    return uid


def queue(session: Session, storage: Storage, worker_id: str, steps: int) -> JobModel | None:
    """Queue a fresh canary for a ``pending`` worker (after its registration committed): the script is stored
    first, outside any transaction, then the job is inserted; ``None`` if the worker is no longer pending."""
    worker = session.get(WorkerModel, worker_id)
    if worker is None or worker.canary_state != CanaryState.PENDING:
        return None
    case = draw(steps, device_of(worker.device_groups))
    user_id = platform_user_id(session)
    session.commit()  # no storage call inside a DB transaction
    job_id = new_id()
    key = bundle_key(user_id, job_id)
    source = script(case).encode()
    size = storage.put_bytes(key, source)
    try:
        now = utcnow()
        job = JobModel(
            id=job_id, user_id=user_id, name=f"canary for worker {worker_id}", state=JobState.QUEUED,
            entrypoint=ENTRYPOINT, warnings=[], bundle_key=key, bundle_size=size, attempt=0,
            # the platform's own script: it runs on a worker without a sandbox too (that worker needs a check most)
            request={"device_groups": [{"name": "default", "ranks": 1, "device_type": case.device}],
                     "launcher": "python", "allow_unsandboxed": True},
            pending_reason=f"waiting for worker {worker_id}", created_at=now, queued_at=now, updated_at=now,
            kind=JobKind.CANARY, canary_for=worker_id, canary_expected=expected_curve(case),
        )
        session.add(job)
        session.commit()
    except Exception:
        session.rollback()
        storage.delete(key)
        raise
    return job


def drop_for(session: Session, worker_ids: Sequence[str], reason: str) -> None:
    """Cancel the queued canaries of workers that are gone (superseded, revoked): nobody else may run them. Call
    after their active jobs were requeued."""
    if not worker_ids:
        return
    now = utcnow()
    session.execute(
        sa.update(JobModel)
        .where(JobModel.kind == JobKind.CANARY, JobModel.canary_for.in_(list(worker_ids)),
               JobModel.state == JobState.QUEUED)
        .values(state=JobState.CANCELLED, ended_at=now, updated_at=now, pending_reason=None, error=reason)
        .execution_options(synchronize_session=False)
    )


def _losses(session: Session, job_id: str, n: int) -> list[dict[str, Any]]:
    """The attempt's records that carry a loss, in order (the worker's ``sys/`` samples carry none)."""
    return [m for m in training_records(session, job_id, n) if "loss" in m]


def _fail(worker: WorkerModel, detail: str) -> None:
    worker.canary_state, worker.canary_detail = CanaryState.FAILED, detail
    worker.reputation = 0.0  # below any MIN_REPUTATION: it gets no jobs


def judge(session: Session, job: JobModel, attempt: AttemptModel, state: str) -> str | None:
    """Decide the worker's canary from its finished attempt (``state``); returns the verdict in words."""
    worker = session.get(WorkerModel, job.canary_for) if job.canary_for else None
    if worker is None or worker.canary_state != CanaryState.PENDING:
        return None
    expected = [{"loss": float(v)} for v in job.canary_expected or []]
    if state != JobState.SUCCEEDED:
        why = attempt.error or (f"exit code {attempt.exit_code}" if attempt.exit_code is not None else state)
        _fail(worker, f"failed: the canary ended {state} ({why})")
        return worker.canary_detail
    reported = _losses(session, job.id, attempt.n)
    agree, detail = compare(reported, expected, RTOL)
    if not reported:
        agree, detail = False, f"it reported no loss ({len(expected)} expected)"
    if agree:
        worker.canary_state = CanaryState.PASSED
        worker.canary_detail = f"passed: {len(expected)} losses of a known-answer training agree within {RTOL:g}"
    else:
        _fail(worker, f"failed: wrong loss curve ({detail})")
    return worker.canary_detail


def expire(session: Session, timeout_s: float, now: dt.datetime | None = None) -> list[Requeued]:
    """Fail the canaries assigned more than ``timeout_s`` ago and not finished: their workers fail the check
    (their heartbeat then tells them to stop it)."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=timeout_s)
    out = []
    for job in session.scalars(
        sa.select(JobModel)
        .where(JobModel.kind == JobKind.CANARY, JobModel.state.in_([s.value for s in ACTIVE_JOB_STATES]),
               JobModel.assigned_at < cutoff)
        .with_for_update(skip_locked=True)
    ):
        reason = f"the canary did not finish within {timeout_s:g}s"
        attempt = session.scalar(
            sa.select(AttemptModel).where(AttemptModel.job_id == job.id, AttemptModel.n == job.attempt)
        )
        if attempt is not None:
            attempt.state, attempt.ended_at, attempt.error = AttemptState.FAILED, now, reason
        job.state, job.ended_at, job.updated_at, job.error, job.slots = JobState.FAILED, now, now, reason, None
        worker = session.get(WorkerModel, job.canary_for) if job.canary_for else None
        if worker is not None and worker.canary_state == CanaryState.PENDING:
            _fail(worker, f"failed: {reason}")
        out.append(Requeued(job.id, job.user_id, job.attempt, job.state, f"attempt {job.attempt} failed: {reason}"))
    return out
