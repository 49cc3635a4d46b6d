"""Spot-check replay: a sampled succeeded attempt of a donor is re-run for its first k optimizer steps on a trusted
worker, and its per-step loss and grad norm must agree with what the donor reported.

Flow (all inside the callers' transactions; the log lines go out after commit):

1. ``finish`` of a donor's attempt with ``succeeded``: ``should_sample`` draws (after the attempt ended, so the
   donor cannot behave only when watched). Sampled: the attempt's ``validation`` is ``pending``, the job goes to
   ``validating`` (not terminal: clients keep waiting, the log stream stays open), and ``start_replay`` queues a
   replay job (``kind='replay'``, same bundle, entrypoint and request) that the matcher places only on a trusted
   worker other than the donor. Every attempt runs with ``TWINKLE_DETERMINISTIC=1``; the replay also gets
   ``TWINKLE_STOP_AFTER_STEPS=k`` (``job_env``).
2. The replay's ``finish`` (or its giving up) calls ``conclude``: ``compare`` the replay's metric records with the
   donor's first ones. Agree: the attempt is ``validated``, the job ``succeeded``, the donor's reputation rises and
   its pending credit is granted. Disagree (or the donor posted nothing, or the replay failed where the donor
   claimed success): the attempt is ``unverified``, the donor's reputation drops and its pending credit is
   forfeited, and the job is queued again (the matcher avoids workers with an unverified attempt of it).
   No metrics from the replay either: ``inconclusive``, the job succeeds and no credit moves.

Who is trusted: a worker of a token the admin marked ``trusted`` (a platform pool), or a donor at or above
``TRUSTED_REPUTATION`` with ``TRUSTED_MIN_VALIDATED`` validated attempts. Trusted pools are never sampled;
reputable donors still are.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from contract.jobs import is_system_record
from scheduler.db import (
    AttemptModel,
    JobKind,
    JobModel,
    JobState,
    MetricModel,
    Validation,
    WorkerModel,
    WorkerState,
    new_id,
    utcnow,
)
from scheduler.services import usage
from scheduler.services.matching import device_family

COMPARED = ("loss", "grad_norm")
_rng = random.SystemRandom()  # not predictable from outside: sampling must not be guessable by a donor


@dataclass(frozen=True)
class ReplayPolicy:
    """The knobs of spot-checking (scheduler settings ``REPLAY_*``, ``MIN_REPUTATION``, ``TRUSTED_*``)."""

    fraction: float = 0.0
    first_n: int = 0
    steps: int = 3
    wait_s: float = 1800.0
    rtol_cpu: float = 1e-4
    rtol_gpu: float = 2e-2
    min_reputation: float = 0.25
    trusted_reputation: float = 0.9
    trusted_min_validated: int = 20
    max_attempts: int = 5
    reward: float = 0.05  # reputation gained per validated attempt
    penalty: float = 0.5  # reputation lost per mismatch: a new donor (0.5) is out after one
    # the known-answer canary of new donors (``scheduler.services.canary``) rides along: it is judged where
    # replays are, by the same callers; off unless the settings say so (tests that build a bare policy)
    canary_required: bool = False
    canary_steps: int = 8
    canary_timeout_s: float = 600.0

    @classmethod
    def from_settings(cls, s: Any) -> ReplayPolicy:
        return cls(
            fraction=s.replay_fraction, first_n=s.replay_first_n, steps=s.replay_steps, wait_s=s.replay_wait_s,
            rtol_cpu=s.replay_rtol_cpu,
            rtol_gpu=s.replay_rtol_gpu, min_reputation=s.min_reputation, trusted_reputation=s.trusted_reputation,
            trusted_min_validated=s.trusted_min_validated, max_attempts=s.max_attempts,
            canary_required=s.canary_required, canary_steps=s.canary_steps, canary_timeout_s=s.canary_timeout_s,
        )

    def is_trusted(self, worker: WorkerModel) -> bool:
        return bool(worker.trusted) or (
            worker.reputation >= self.trusted_reputation and worker.validated_attempts >= self.trusted_min_validated
        )

    def may_work(self, worker: WorkerModel) -> bool:
        return bool(worker.trusted) or worker.reputation >= self.min_reputation


def job_env(job: JobModel, policy: ReplayPolicy) -> dict[str, str]:
    """The environment the platform adds to an attempt (``StartResponse.env``)."""
    env = {"TWINKLE_DETERMINISTIC": "1"}
    if job.kind == JobKind.REPLAY:
        env["TWINKLE_STOP_AFTER_STEPS"] = str(policy.steps)
    return env


def should_sample(worker: WorkerModel, policy: ReplayPolicy) -> bool:
    if worker.trusted:
        return False
    return worker.validated_attempts < policy.first_n or _rng.random() < policy.fraction


def replay_possible(session: Session, donor: WorkerModel, policy: ReplayPolicy) -> bool:
    """Is a live worker other than the donor allowed to run the replay? Without one a sampled job would wait in
    ``validating`` for nobody (a deployment with no trusted pool and no reputable donor yet): no spot check."""
    may_replay = sa.or_(
        WorkerModel.trusted.is_(True),
        sa.and_(WorkerModel.reputation >= policy.trusted_reputation,
                WorkerModel.validated_attempts >= policy.trusted_min_validated),
    )
    return session.scalar(
        sa.select(WorkerModel.id)
        .where(WorkerModel.state == WorkerState.LIVE, WorkerModel.id != donor.id, may_replay)
        .limit(1)
    ) is not None


def stale_replays(session: Session, policy: ReplayPolicy, now: Any) -> list[JobModel]:
    """Replays still queued ``policy.wait_s`` after they were queued (their trusted workers are gone or busy)."""
    cutoff = now - dt.timedelta(seconds=policy.wait_s)
    return list(session.scalars(
        sa.select(JobModel)
        .where(JobModel.kind == JobKind.REPLAY, JobModel.state == JobState.QUEUED, JobModel.queued_at < cutoff)
        .with_for_update(skip_locked=True)
    ))


def start_replay(session: Session, job: JobModel, attempt: AttemptModel, steps: int) -> JobModel:
    """Mark the attempt pending, the job validating, and queue its replay."""
    now = utcnow()
    attempt.validation = Validation.PENDING
    job.state = JobState.VALIDATING
    job.pending_reason = f"validating: attempt {attempt.n} is being replayed for {steps} step(s) on a trusted worker"
    replay = JobModel(
        id=new_id(), user_id=job.user_id, name=f"replay of {job.name}"[:255], state=JobState.QUEUED,
        entrypoint=job.entrypoint, request=job.request, warnings=[], bundle_key=job.bundle_key,
        bundle_size=job.bundle_size, attempt=0, pending_reason="waiting for a trusted worker", created_at=now,
        queued_at=now, updated_at=now, kind=JobKind.REPLAY, replay_of=job.id, replay_attempt=attempt.n,
    )
    session.add(replay)
    return replay


def training_records(session: Session, job_id: str, n: int) -> list[dict[str, Any]]:
    """The attempt's training records in order. The worker's ``sys/`` samples are left out: they come every few
    seconds, so they fall between training records at different places in two honest runs and would shift the
    record-by-record comparison."""
    return [
        dict(m)
        for m in session.scalars(
            sa.select(MetricModel.metrics)
            .where(MetricModel.job_id == job_id, MetricModel.attempt == n)
            .order_by(MetricModel.step, MetricModel.ts, MetricModel.id)
        )
        if m and not is_system_record(m)
    ]


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def compare(original: Sequence[dict[str, Any]], replay: Sequence[dict[str, Any]], rtol: float) -> tuple[bool, str]:
    """Do the donor's first records agree with the replay's, record by record, on loss and grad norm?

    Returns (agree, what was compared or where they differ). Nothing comparable in the replay is ``(True, "")``
    with an empty detail: the caller calls that inconclusive."""
    checked = 0
    for i, rec in enumerate(replay):
        for key in COMPARED:
            want = _number(rec.get(key))
            if want is None:
                continue
            if i >= len(original):
                return False, f"record {i + 1}: the replay has {key}={want:.6g}, the attempt reported no record"
            got = _number(original[i].get(key))
            if got is None or abs(got - want) > rtol * max(abs(got), abs(want)) + 1e-12:
                reported = "nothing" if got is None else f"{got:.6g}"
                return False, f"record {i + 1}: {key} reported {reported}, replay {want:.6g}"
            checked += 1
    if not checked:
        return True, ""
    return True, f"{checked} value(s) of {len(replay)} record(s) agree within {rtol:g}"


@dataclass
class Verdict:
    """What a replay decided about a donor's attempt; the API notes it in the job's log after commit."""

    job_id: str
    user_id: str
    attempt: int
    job_state: str  # the checked job's state now
    message: str


def conclude(session: Session, replay: JobModel, replay_state: str, policy: ReplayPolicy) -> Verdict | None:
    """Judge the checked attempt from the replay that just ended (``replay_state``)."""
    if replay.replay_of is None or replay.replay_attempt is None:
        return None
    job = session.get(JobModel, replay.replay_of)
    attempt = session.scalar(
        sa.select(AttemptModel).where(AttemptModel.job_id == replay.replay_of, AttemptModel.n == replay.replay_attempt)
    )
    if job is None or attempt is None or attempt.validation != Validation.PENDING:
        return None
    donor = session.get(WorkerModel, attempt.worker_id) if attempt.worker_id else None
    gpu = any(device_family(str(g.get("device_type", ""))) in ("cuda", "npu")
              for g in (job.request or {}).get("device_groups", []))
    rtol = policy.rtol_gpu if gpu else policy.rtol_cpu
    now = utcnow()
    if replay_state == JobState.SUCCEEDED:
        replayed = training_records(session, replay.id, replay.attempt)
        agree, detail = compare(training_records(session, job.id, attempt.n), replayed, rtol)
        if agree and not detail:
            attempt.validation = Validation.INCONCLUSIVE
            _settle(job, now)
            return Verdict(job.id, job.user_id, attempt.n, job.state,
                           f"attempt {attempt.n}: the replay recorded no loss or grad norm to compare; not validated")
    elif replay_state == JobState.FAILED:
        agree, detail = False, f"the replay failed where attempt {attempt.n} reported success"
    else:  # the replay was lost by the platform's side (its worker vanished) or cancelled: no evidence either way
        attempt.validation = Validation.INCONCLUSIVE
        _settle(job, now)
        return Verdict(job.id, job.user_id, attempt.n, job.state,
                       f"attempt {attempt.n}: the replay could not finish ({replay_state}); not validated")
    if agree:
        attempt.validation = Validation.VALIDATED
        if donor is not None:
            donor.validated_attempts += 1
            donor.reputation = min(1.0, donor.reputation + policy.reward)
            usage.grant_pending(session, donor)
        _settle(job, now)
        return Verdict(job.id, job.user_id, attempt.n, job.state,
                       f"attempt {attempt.n} validated: a replay on a trusted worker agrees ({detail})")
    attempt.validation = Validation.UNVERIFIED
    if donor is not None:
        donor.reputation = max(0.0, donor.reputation - policy.penalty)
        usage.forfeit_pending(session, donor.id)
    message = f"attempt {attempt.n} failed its spot check ({detail}); its result is not trusted"
    if job.state == JobState.VALIDATING:
        if job.attempt >= policy.max_attempts:
            job.state, job.ended_at = JobState.FAILED, now
            job.error = f"gave up after {job.attempt} attempts; last: {message}"
            message += f"; no attempts left (MAX_ATTEMPTS={policy.max_attempts})"
        else:
            job.state, job.queued_at, job.ended_at = JobState.QUEUED, now, None
            job.pending_reason = f"requeued: {message}"
            message += f"; requeued as attempt {job.attempt + 1} on another worker"
        job.updated_at = now
    return Verdict(job.id, job.user_id, attempt.n, job.state, message)


def _settle(job: JobModel, now: Any) -> None:
    if job.state == JobState.VALIDATING:  # a job cancelled meanwhile stays cancelled
        job.state, job.ended_at, job.updated_at, job.pending_reason = JobState.SUCCEEDED, now, now, None


def unverified_workers(session: Session, job_ids: Sequence[str]) -> dict[str, frozenset[str]]:
    """job id -> workers with an unverified attempt of it (the matcher never gives the job back to them)."""
    out: dict[str, set[str]] = {}
    if job_ids:
        for jid, wid in session.execute(
            sa.select(AttemptModel.job_id, AttemptModel.worker_id).where(
                AttemptModel.job_id.in_(list(job_ids)), AttemptModel.validation == Validation.UNVERIFIED,
                AttemptModel.worker_id.is_not(None),
            )
        ):
            out.setdefault(jid, set()).add(str(wid))
    return {k: frozenset(v) for k, v in out.items()}
