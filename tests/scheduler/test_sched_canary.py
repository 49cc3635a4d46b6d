"""Known-answer canaries (issue 13, item 4): a new donor's worker runs a tiny training whose loss curve the platform
computed itself, and gets no user's job until it passed; a wrong, missing or failed answer bans it."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
import sqlalchemy as sa

from contract import routes
from scheduler.db import JobKind, JobModel
from scheduler.services import canary, dispatch
from scheduler.services.validation import ReplayPolicy
from scheduler.testing import (
    InProcessWorker,
    auth,
    create_user,
    create_worker_token,
    dispatch_once,
    job_view,
    real_executor,
    submit_script,
    workers_by_name,
)
from scheduler.testing.factories import CPU_JOB, cpu_group, gpu_group

API = routes.API_PREFIX


@pytest.fixture()
def scheduler_overrides() -> dict[str, Any]:
    # the test harness turns canaries off by default; here they are what is tested
    return {"canary_required": True, "canary_steps": 6}


def _canaries(env: Any, worker_id: str | None) -> list[JobModel]:
    with env.rt.db.session() as s:
        rows = list(s.scalars(
            sa.select(JobModel).where(JobModel.kind == JobKind.CANARY, JobModel.canary_for == worker_id)
            .order_by(JobModel.created_at)
        ))
        for r in rows:
            s.expunge(r)
        return rows


def _canary_of(env: Any, worker: InProcessWorker) -> JobModel:
    [job] = _canaries(env, worker.worker_id)
    return job


def _records(losses: list[float]) -> list[dict]:
    return [{"step": i + 1, "ts": float(i + 1), "metrics": {"loss": v}} for i, v in enumerate(losses)]


def _two_slot_donor(c: Any, owner: str = "donor", name: str = "donor") -> InProcessWorker:
    """A donor with two CPU slots: without the rule a user's job would take the slot its canary leaves free."""
    w = InProcessWorker(c, create_worker_token(c, owner), name, [cpu_group(name="a"), cpu_group(name="b")])
    w.register()
    return w


def _answer(worker: InProcessWorker, job: JobModel, records: list[dict], state: str = "succeeded") -> str:
    """Run the canary as a worker that reports ``records`` (the stand-in for the script's metrics file)."""
    claimed = worker.claim()
    assert claimed.status_code == 200 and claimed.json()["job_id"] == job.id, claimed.text
    assert worker.start(job.id, 1).status_code == 200
    if records:
        assert worker.metrics(job.id, 1, records).status_code == 200
    r = worker.finish(job.id, 1, state=state, exit_code=0 if state == "succeeded" else 1)
    assert r.status_code == 200, r.text
    return str(r.json()["state"])


def test_a_new_donor_runs_its_canary_first_and_gets_a_users_job_only_after_it_passed(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    jid = submit_script(c, user, CPU_JOB).json()["id"]  # queued before the donor came
    donor = _two_slot_donor(c)
    shown = workers_by_name(c, user)["donor"]
    assert shown["canary"]["state"] == "pending"

    dispatch_once(env)
    job = _canary_of(env, donor)
    with env.rt.db.session() as s:
        row = s.get(JobModel, job.id)
        assert row is not None and row.state == "assigned" and row.worker_id == donor.worker_id
    assert job_view(c, user, jid)["state"] == "queued", "no user's job while the canary has not passed"
    assert [j["id"] for j in c.get(f"{API}{routes.JOBS}", headers=auth(user)).json()["items"]] == [jid]

    # what the worker gets: the script, its data baked in; the expected curve stays on the platform
    started = donor.start(job.id, 1)
    assert started.status_code == 200 and started.json()["entrypoint"] == canary.ENTRYPOINT
    source = donor.bundle(job.id, 1).content.decode()
    assert "TWINKLE_METRICS_FILE" in source and "torch.optim.SGD" in source
    assert not any(repr(v) in source for v in job.canary_expected or []), "the answer is not in the script"
    dispatch_once(env)
    assert job_view(c, user, jid)["state"] == "queued", "nor while it runs"

    # the honest run's records, plus a system-use sample (no loss) as the real worker sends
    records = _records(list(job.canary_expected or []))
    records.insert(2, {"step": 2, "ts": 2.5, "metrics": {"sys/cpu_percent": 40.0}})
    assert donor.metrics(job.id, 1, records).status_code == 200
    assert donor.finish(job.id, 1).json()["state"] == "succeeded"
    shown = workers_by_name(c, user)["donor"]
    assert shown["canary"]["state"] == "passed" and "agree" in shown["canary"]["detail"]
    assert shown["reputation"] == pytest.approx(0.5) and shown["pending_gpu_hours"] == 0.0

    dispatch_once(env)
    got = job_view(c, user, jid)
    assert got["state"] == "assigned" and got["worker_id"] == donor.worker_id


@pytest.mark.parametrize("how", ["made-up-curve", "no-metrics", "shifted-by-one", "failed-exit"])
def test_a_donor_answering_wrong_fails_its_canary_gets_no_jobs_and_the_workers_page_says_why(scheduler_env, how):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    donor = _two_slot_donor(c)
    dispatch_once(env)
    job = _canary_of(env, donor)
    expected = list(job.canary_expected or [])
    records = {
        "made-up-curve": _records([2.0 / (s + 1) for s in range(len(expected))]),
        "no-metrics": [],  # "succeeded" without running anything
        "shifted-by-one": _records([*expected[1:], expected[-1]]),
        "failed-exit": _records(expected[:2]),
    }[how]
    state = _answer(donor, job, records, state="failed" if how == "failed-exit" else "succeeded")
    assert state == ("failed" if how == "failed-exit" else "succeeded")

    shown = workers_by_name(c, user)["donor"]
    assert shown["canary"]["state"] == "failed"
    why = {"made-up-curve": "wrong loss curve (record 1", "no-metrics": "reported no loss",
           "shifted-by-one": "wrong loss curve (record 1", "failed-exit": "the canary ended failed"}[how]
    assert why in shown["canary"]["detail"], shown["canary"]
    assert shown["reputation"] < env.settings.min_reputation

    jid = submit_script(c, user, CPU_JOB).json()["id"]
    assert donor.heartbeat().status_code == 200
    dispatch_once(env)
    assert job_view(c, user, jid)["state"] == "queued", "a donor that failed its canary gets no jobs"

    # registering again (a restart) does not buy a new try: the verdict stays with the token and name
    donor.register()
    assert workers_by_name(c, user)["donor"]["canary"]["state"] == "failed"
    assert _canaries(env, donor.worker_id) == []
    dispatch_once(env)
    assert job_view(c, user, jid)["state"] == "queued"


def test_each_canary_draws_new_parameters_so_a_recorded_answer_fails(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    first, second = _two_slot_donor(c, "ann", "first"), _two_slot_donor(c, "bob", "second")
    dispatch_once(env)
    a, b = _canary_of(env, first), _canary_of(env, second)
    assert a.canary_expected != b.canary_expected
    assert first.bundle(a.id, 1).content != second.bundle(b.id, 1).content

    # the second donor replays the answer the first one got right
    assert _answer(first, a, _records(list(a.canary_expected or []))) == "succeeded"
    assert _answer(second, b, _records(list(a.canary_expected or []))) == "succeeded"
    shown = workers_by_name(c, user)
    assert shown["first"]["canary"]["state"] == "passed"
    assert shown["second"]["canary"]["state"] == "failed"


def test_draws_differ_and_the_curve_is_a_descent():
    rng = random.Random(7)
    cases = [canary.draw(5, rng=rng) for _ in range(3)]
    curves = [canary.expected_curve(k) for k in cases]
    assert len({tuple(k) for k in curves}) == 3 and all(len(k) == 5 for k in curves)
    assert all(k[-1] < k[0] for k in curves), "SGD on least squares lowers the loss"
    assert canary.script(cases[0]) != canary.script(cases[1])
    assert canary.device_of([gpu_group(2), cpu_group()]) == "cuda" and canary.device_of([cpu_group()]) == "cpu"


def test_a_trusted_pool_gets_no_canary_and_works_at_once(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    pool = InProcessWorker(c, create_worker_token(c, "platform", trusted=True), "pool", [cpu_group()])
    pool.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    dispatch_once(env)
    assert _canaries(env, pool.worker_id) == []
    assert workers_by_name(c, user)["pool"]["canary"] is None
    assert job_view(c, user, jid)["worker_id"] == pool.worker_id


@pytest.mark.parametrize("scheduler_overrides", [{"canary_required": False}])
def test_with_canaries_off_a_new_donor_works_at_once(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    donor = _two_slot_donor(c)
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    dispatch_once(env)
    assert _canaries(env, donor.worker_id) == []
    assert workers_by_name(c, user)["donor"]["canary"] is None
    assert job_view(c, user, jid)["worker_id"] == donor.worker_id


def test_a_restart_keeps_a_passed_canary_and_a_canary_cut_short_is_drawn_again(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    donor = _two_slot_donor(c)
    dispatch_once(env)
    cut = _canary_of(env, donor)
    assert donor.start(cut.id, 1).status_code == 200

    # the daemon restarts mid-canary: the old canary is dropped, the new registration gets a fresh one
    old_id = donor.worker_id
    donor.register()
    with env.rt.db.session() as s:
        row = s.get(JobModel, cut.id)
        assert row is not None and row.state == "cancelled"
    fresh = _canary_of(env, donor)
    assert fresh.canary_expected != cut.canary_expected and old_id != donor.worker_id
    dispatch_once(env)
    assert _answer(donor, fresh, _records(list(fresh.canary_expected or []))) == "succeeded"

    donor.register()  # restarted again: same token and name, the pass carries over
    assert workers_by_name(c, user)["donor"]["canary"]["state"] == "passed"
    assert _canaries(env, donor.worker_id) == []
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    dispatch_once(env)
    assert job_view(c, user, jid)["worker_id"] == donor.worker_id


def _a_started_canary(env: Any) -> tuple[str, InProcessWorker, JobModel]:
    user = create_user(env.client, "alice")
    donor = _two_slot_donor(env.client)
    dispatch_once(env)
    job = _canary_of(env, donor)
    assert donor.start(job.id, 1).status_code == 200
    return user, donor, job


def _overdue(env: Any, job: JobModel) -> None:
    with env.rt.db.session() as s:
        s.execute(sa.update(JobModel).where(JobModel.id == job.id).values(
            assigned_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=env.settings.canary_timeout_s + 1)))
        s.commit()


def test_a_canary_not_finished_in_time_fails_its_worker(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user, donor, job = _a_started_canary(env)
    policy = ReplayPolicy.from_settings(env.settings)
    assert dispatch.expire_canaries(env.rt.db, policy) == [], "a fresh canary runs on"
    _overdue(env, job)
    [ended] = dispatch.expire_canaries(env.rt.db, policy)
    assert ended.job_id == job.id and ended.job_state == "failed"
    shown = workers_by_name(c, user)["donor"]
    assert shown["canary"]["state"] == "failed" and "did not finish within" in shown["canary"]["detail"]
    assert donor.heartbeat([(job.id, 1)]).json()["cancel"] == [{"job_id": job.id, "attempt": 1}]


def test_a_canary_cut_off_by_an_api_outage_does_not_fail_its_donor(scheduler_env):
    """The dispatcher fails overdue canaries only once it has seen the platform healthy for a full lease (the
    lease gate of ``scheduler.services.liveness``): a fresh dispatcher, as after an outage, fails none."""
    from scheduler.tasks.dispatcher import scheduled_tasks

    env, c = scheduler_env, scheduler_env.client
    user, _donor, job = _a_started_canary(env)
    _overdue(env, job)
    reap = next(t for t in scheduled_tasks(env.rt) if t.name == "reap")
    reap.run()
    assert workers_by_name(c, user)["donor"]["canary"]["state"] == "pending"


@pytest.mark.slow
def test_the_real_worker_runs_the_real_canary_and_its_curve_is_the_platforms(scheduler_env, tmp_path):
    """The script, run by the real executor (torch, metrics file, tailing, POST /metrics), reports the very curve
    the platform computed in plain Python: an honest worker passes."""
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    token = create_worker_token(c, "donor")
    donor = InProcessWorker(c, token, "donor", [cpu_group()])
    donor.register()
    dispatch_once(env)
    job = _canary_of(env, donor)
    result = real_executor(env, token, tmp_path / "pool").run_attempt(job.id, 1)
    assert result is not None and result.state == "succeeded", result
    shown = workers_by_name(c, user)["donor"]
    assert shown["canary"]["state"] == "passed", shown["canary"]
    assert "6 losses" in shown["canary"]["detail"]
