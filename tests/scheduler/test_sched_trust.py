"""Donors are checked, not believed (issue 13, items 3-5): hardware claims against the probe and the rank cap,
spot-check replays of donors' results on a trusted worker, and credit only for validated work."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from contract import routes
from scheduler.db import AttemptModel, JobKind, JobModel, WorkerModel
from scheduler.services import dispatch, events
from scheduler.services.validation import ReplayPolicy, compare
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
GPU_JOB = CPU_JOB.replace("device_type='cpu'", "device_type='cuda'")


@pytest.fixture()
def scheduler_overrides() -> dict[str, Any]:
    # every succeeded attempt of a new donor is replayed until it has one validated; 3 steps compared
    return {"replay_first_n": 1, "replay_fraction": 0.0, "replay_steps": 3, "max_ranks_per_worker": 64}


def _replay_of(env: Any, jid: str) -> JobModel:
    with env.rt.db.session() as s:
        job = s.scalar(sa.select(JobModel).where(JobModel.kind == JobKind.REPLAY, JobModel.replay_of == jid))
        assert job is not None, "no replay was queued"
        s.expunge(job)
        return job


def _ran_for(env: Any, jid: str, n: int, hours: float) -> None:
    """The attempt started ``hours`` ago (the platform measures wall time from start to finish)."""
    with env.rt.db.session() as s:
        s.execute(
            sa.update(AttemptModel)
            .where(AttemptModel.job_id == jid, AttemptModel.n == n)
            .values(started_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours))
        )
        s.commit()


# --- 3. hardware claims ------------------------------------------------------------------------------------------


def b200(ranks: int, name: str) -> dict:
    return {"name": name, "ranks": ranks, "device_type": "cuda", "device_model": "B200", "memory_gb": 192.0}


def test_a_sybil_claiming_64_groups_of_4096_b200_ranks_is_refused_with_the_reason(scheduler_env):
    c = scheduler_env.client
    groups = [b200(4096, f"g{i}") for i in range(64)]
    one_cpu = {"devices": [{"device_type": "cpu", "count": 1, "memory_gb": 8.0}], "seconds": 0.1}
    r = InProcessWorker(c, create_worker_token(c), "sybil", groups, probe=one_cpu).try_register()
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "too_many_ranks"
    assert "262144 ranks" in r.json()["error"]["message"] and "at most 64" in r.json()["error"]["message"]

    # a probe faked to match does not help: the cap holds whatever the probe says
    faked = {"devices": [{"device_type": "cuda", "device_model": "B200", "count": 65536, "memory_gb": 192.0}] * 4}
    r = InProcessWorker(c, create_worker_token(c), "sybil-2", groups, probe=faked).try_register()
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_ranks"

    user = create_user(c, "alice")
    assert workers_by_name(c, user) == {}, "nothing of a refused registration is stored"


def test_claims_beyond_the_probe_are_refused_naming_each_problem(scheduler_env):
    c = scheduler_env.client
    two_cores = {"devices": [{"device_type": "cpu", "device_model": "Xeon", "count": 2, "memory_gb": 16.0}]}
    r = InProcessWorker(c, create_worker_token(c), "liar", [b200(8, "gpus"), cpu_group(4)], probe=two_cores)
    answer = r.try_register()
    assert answer.status_code == 422, answer.text
    err = answer.json()["error"]
    assert err["code"] == "claim_beyond_probe"
    assert "8 cuda ranks offered, the probe found 0" in err["fields"]["device_groups.cuda"]
    assert "4 cpu ranks offered, the probe found 2" in err["fields"]["device_groups.cpu"]

    one_h100 = {"devices": [{"device_type": "cuda", "device_model": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6}]}
    answer = InProcessWorker(c, create_worker_token(c), "inflated", [b200(1, "g")], probe=one_h100).try_register()
    fields = answer.json()["error"]["fields"]
    assert answer.status_code == 422 and "memory_gb" in fields["device_groups.0.memory_gb"] + "memory_gb"
    assert "'B200' offered" in fields["device_groups.0.device_model"]

    no_probe = InProcessWorker(c, create_worker_token(c), "old", [cpu_group()], probe=None).try_register()
    assert no_probe.status_code == 422 and no_probe.json()["error"]["code"] == "probe_missing"


def test_a_claim_within_the_probe_is_accepted_and_the_probe_is_shown(scheduler_env):
    c = scheduler_env.client
    probe = {"devices": [{"device_type": "cuda", "device_model": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6,
                          "matmul_tflops": 48.5}] * 2 + [{"device_type": "cpu", "count": 16, "memory_gb": 128.0}],
             "seconds": 1.5}
    groups = [gpu_group(2, memory_gb=79.6, model="H100"), cpu_group(8)]
    InProcessWorker(c, create_worker_token(c), "honest", groups, probe=probe).register()
    shown = workers_by_name(c, create_user(c, "alice"))["honest"]
    assert shown["probe"]["devices"][0]["device_model"] == "NVIDIA H100 80GB HBM3"
    assert shown["probe"]["devices"][0]["matmul_tflops"] == 48.5
    assert shown["probe"]["devices"][2]["count"] == 16
    assert shown["reputation"] == 0.5 and shown["validated_attempts"] == 0 and shown["trusted"] is False


def test_the_real_worker_probe_fits_its_own_offer(scheduler_env):
    """worker.probe.run_probe on this machine backs what worker.devices offers by default (the CPU here)."""
    from contract.workers import HardwareProbe
    from worker.devices import offer_from_settings
    from worker.probe import run_probe
    from worker.settings import WorkerSettings

    probe = run_probe(with_cuda=False)
    HardwareProbe.model_validate(probe)
    cpu = probe["devices"][-1]
    assert cpu["device_type"] == "cpu" and cpu["count"] >= 1 and cpu["matmul_tflops"] > 0
    offer = offer_from_settings(WorkerSettings(device_type="cpu")).as_dict()
    c = scheduler_env.client
    InProcessWorker(c, create_worker_token(c), "real-probe", [offer], probe=probe).register()


# --- 4. spot-check replay: the bookkeeping (a worker that copies the metrics stands in for the replay) ------------


def _donor_success(env: Any, metrics: list[dict], *, gpu: bool = False) -> tuple[str, str, InProcessWorker]:
    c = env.client
    user = create_user(c, "alice")
    groups = [gpu_group(1)] if gpu else [cpu_group()]
    donor = InProcessWorker(c, create_worker_token(c, "donor"), "donor", groups)
    donor.register()
    script = GPU_JOB if gpu else CPU_JOB
    jid = submit_script(c, user, script).json()["id"]
    dispatch_once(env)
    assert donor.start(jid, 1).status_code == 200
    assert donor.metrics(jid, 1, metrics).status_code == 200
    _ran_for(env, jid, 1, hours=1.0)
    with _a_trusted_worker_is_live(env):  # a spot check is drawn only when someone could run it
        r = donor.finish(jid, 1)
    assert r.status_code == 200 and r.json()["state"] == "validating", r.text
    assert donor.finish(jid, 1).json()["state"] == "validating", "a retried finish gets the same answer"
    return user, jid, donor


@contextlib.contextmanager
def _a_trusted_worker_is_live(env: Any) -> Iterator[InProcessWorker]:
    """A trusted standby is live for the block, then lost: each test brings the pool that takes the replay."""
    standby = InProcessWorker(env.client, create_worker_token(env.client, "platform", trusted=True), "standby",
                              [cpu_group()])
    standby.register()
    try:
        yield standby
    finally:
        with env.rt.db.session() as s:
            s.execute(sa.update(WorkerModel).where(WorkerModel.id == standby.worker_id).values(state="lost"))
            s.commit()


def _pool_replays(
    env: Any, jid: str, metrics: list[dict], *, gpu: bool = False, ranks: int = 1
) -> tuple[InProcessWorker, str]:
    c = env.client
    pool = InProcessWorker(c, create_worker_token(c, "platform", trusted=True), "pool", [gpu_group(ranks)] if gpu
                           else [cpu_group(ranks)])
    pool.register()
    dispatch_once(env)
    replay = _replay_of(env, jid)
    started = pool.start(replay.id, 1)
    assert started.status_code == 200
    assert started.json()["env"] == {"TWINKLE_DETERMINISTIC": "1", "TWINKLE_STOP_AFTER_STEPS": "3"}
    assert pool.metrics(replay.id, 1, metrics).status_code == 200
    assert pool.finish(replay.id, 1).status_code == 200
    return pool, replay.id


CURVE = [{"step": s, "ts": float(s), "metrics": {"loss": 2.0 / s, "grad_norm": 1.0 + s}} for s in (1, 2, 3)]


def test_a_validated_attempt_ends_succeeded_and_its_pending_credit_is_granted(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user, jid, _donor = _donor_success(env, CURVE, gpu=True)
    job = job_view(c, user, jid)
    assert job["state"] == "validating" and job["attempts"][0]["validation"] == "pending"
    assert "being replayed" in job["pending_reason"]
    w = workers_by_name(c, user)["donor"]
    assert w["gpu_hours"] == 0.0 and w["pending_gpu_hours"] == pytest.approx(1.0, abs=0.01)
    assert [j["id"] for j in c.get(f"{API}{routes.JOBS}", headers=auth(user)).json()["items"]] == [jid], (
        "the replay is the platform's, not in the owner's list"
    )

    _pool_replays(env, jid, CURVE, gpu=True)
    job = job_view(c, user, jid)
    assert job["state"] == "succeeded" and job["attempts"][0]["validation"] == "validated"
    w = workers_by_name(c, user)["donor"]
    assert w["gpu_hours"] == pytest.approx(1.0, abs=0.01) and w["pending_gpu_hours"] == 0.0
    assert w["validated_attempts"] == 1 and w["reputation"] > 0.5
    log = c.get(f"{API}{routes.path(routes.JOB_LOGS, job_id=jid)}", headers=auth(user)).text
    assert "attempt 1 validated" in log


def _with_system_samples(curve: list[dict], every: float, offset: float) -> list[dict]:
    """``curve`` with the worker's ``sys/`` samples between its records, as a real worker posts them."""
    samples = [{"step": r["step"], "ts": r["ts"] + offset + k * every, "metrics": {"sys/cpu_percent": 99.0}}
               for r in curve for k in range(int(1 / every))]
    return sorted(curve + samples, key=lambda r: (r["step"], r["ts"]))


def test_an_honest_donor_passes_although_its_system_samples_fall_elsewhere_than_the_replays(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user, jid, _donor = _donor_success(env, _with_system_samples(CURVE, every=0.5, offset=-0.3))
    _pool_replays(env, jid, _with_system_samples(CURVE, every=1.0, offset=0.2))
    job = job_view(c, user, jid)
    assert job["state"] == "succeeded" and job["attempts"][0]["validation"] == "validated", job


@pytest.mark.parametrize("posted", [[], [{**r, "metrics": {**r["metrics"], "loss": 0.1}} for r in CURVE]],
                         ids=["no-metrics", "made-up-loss"])
def test_a_mismatch_marks_the_attempt_unverified_requeues_elsewhere_and_bans_the_donor(scheduler_env, posted):
    env, c = scheduler_env, scheduler_env.client
    user, jid, donor = _donor_success(env, posted, gpu=True)
    pool, _ = _pool_replays(env, jid, CURVE, gpu=True)
    job = job_view(c, user, jid)
    assert job["state"] == "queued" and job["attempts"][0]["validation"] == "unverified"
    assert "failed its spot check" in job["pending_reason"]
    w = workers_by_name(c, user)["donor"]
    assert w["reputation"] < env.settings.min_reputation
    assert w["gpu_hours"] == 0.0 and w["pending_gpu_hours"] == 0.0, "a failed check forfeits the pending credit"
    log = c.get(f"{API}{routes.path(routes.JOB_LOGS, job_id=jid)}", headers=auth(user)).text
    assert "failed its spot check" in log and "requeued as attempt 2" in log

    # the donor gets nothing more, not this job and not a new one; the pool takes the job
    second = submit_script(c, user, GPU_JOB).json()["id"]
    assert donor.heartbeat().status_code == 200 and pool.heartbeat().status_code == 200  # both live and idle
    dispatch_once(env)
    assert job_view(c, user, jid)["attempts"][1]["worker_id"] == pool.worker_id
    assert job_view(c, user, second)["state"] == "queued"


def test_cancelling_a_validating_job_ends_it_at_once(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user, jid, _ = _donor_success(env, CURVE)
    r = c.post(f"{API}{routes.path(routes.JOB_CANCEL, job_id=jid)}", headers=auth(user))
    assert r.status_code == 200 and r.json()["state"] == "cancelled"


def test_trusted_pools_are_not_sampled(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    pool = InProcessWorker(c, create_worker_token(c, "platform", trusted=True), "pool", [cpu_group()])
    pool.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    dispatch_once(env)
    assert pool.start(jid, 1).json()["env"] == {"TWINKLE_DETERMINISTIC": "1"}
    assert pool.finish(jid, 1).json()["state"] == "succeeded"


def test_with_no_live_trusted_worker_a_donors_success_is_not_held_for_a_check_nobody_can_run(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    donor = InProcessWorker(c, create_worker_token(c, "donor"), "donor", [gpu_group(1)])
    donor.register()
    jid = submit_script(c, user, GPU_JOB).json()["id"]
    dispatch_once(env)
    assert donor.start(jid, 1).status_code == 200
    assert donor.metrics(jid, 1, CURVE).status_code == 200
    _ran_for(env, jid, 1, hours=1.0)
    assert donor.finish(jid, 1).json()["state"] == "succeeded"
    job = job_view(c, user, jid)
    assert job["state"] == "succeeded" and job["attempts"][0]["validation"] is None
    with env.rt.db.session() as s:
        assert s.scalar(sa.select(JobModel.id).where(JobModel.replay_of == jid)) is None
    w = workers_by_name(c, user)["donor"]
    assert w["gpu_hours"] == 0.0 and w["pending_gpu_hours"] == pytest.approx(1.0, abs=0.01), (
        "unchecked work is not credited"
    )


def test_a_replay_no_trusted_worker_takes_in_time_is_dropped_and_the_job_succeeds_unvalidated(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    policy = ReplayPolicy.from_settings(env.settings)
    user, jid, _donor = _donor_success(env, CURVE)
    replay = _replay_of(env, jid)
    assert dispatch.expire_replays(env.rt.db, policy) == [], "a fresh replay waits"
    with env.rt.db.session() as s:
        s.execute(sa.update(JobModel).where(JobModel.id == replay.id).values(
            queued_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=policy.wait_s + 1)))
        s.commit()

    [ended] = dispatch.expire_replays(env.rt.db, policy)
    events.requeued(env.rt.db, env.rt.redis, env.rt.storage, [ended])
    job = job_view(c, user, jid)
    assert job["state"] == "succeeded" and job["attempts"][0]["validation"] == "inconclusive"
    with env.rt.db.session() as s:
        row = s.get(JobModel, replay.id)
        assert row is not None and row.state == "cancelled" and "no trusted worker took it" in (row.error or "")
    w = workers_by_name(c, user)["donor"]
    assert w["reputation"] == pytest.approx(0.5) and w["gpu_hours"] == 0.0, "no evidence: no reward, no penalty"
    log = c.get(f"{API}{routes.path(routes.JOB_LOGS, job_id=jid)}", headers=auth(user)).text
    assert "no trusted worker took it" in log and "not validated" in log
    assert dispatch.expire_replays(env.rt.db, policy) == [], "dropped once"


def test_compare_is_per_record_and_relative():
    replay = [{"loss": 2.0, "grad_norm": 1.0}, {"loss": 1.5, "grad_norm": 0.9}]
    assert compare([{"loss": 2.0 * (1 + 5e-5), "grad_norm": 1.0}, {"loss": 1.5, "grad_norm": 0.9}], replay, 1e-4)[0]
    ok, why = compare([{"loss": 2.0 * (1 + 5e-4), "grad_norm": 1.0}, {"loss": 1.5, "grad_norm": 0.9}], replay, 1e-4)
    assert not ok and "record 1: loss" in why
    ok, why = compare([{"loss": 2.0, "grad_norm": 1.0}], replay, 1e-4)
    assert not ok and "record 2" in why
    assert compare([], [{"speed": 3.0}], 1e-4) == (True, "")  # nothing to compare: inconclusive


def test_the_worker_passes_only_the_platforms_job_switches():
    from worker.tasks import platform_env

    env = platform_env({"TWINKLE_DETERMINISTIC": "1", "TWINKLE_STOP_AFTER_STEPS": 3, "LD_PRELOAD": "/x.so"})
    assert env == {"TWINKLE_DETERMINISTIC": "1", "TWINKLE_STOP_AFTER_STEPS": "3"}
    assert platform_env(None) == {} and platform_env(["x"]) == {}


# --- 4. the key test: a worker that reports success without running, caught by a real replay --------------------

ROOT = Path(__file__).resolve().parents[2]
# The job imports twinkle from this checkout (the worker scrubs PYTHONPATH; the venv may hold another checkout's),
# then runs the example unchanged: 6 optimizer steps of 4 rows, a metric record after each.
TRAIN = f"""
import os, runpy, sys
sys.path.insert(0, {str(ROOT)!r})
os.environ.update(DATA_ROWS='48', BATCH_SIZE='4', LOG_EVERY='2', MAX_STEPS='6')
runpy.run_path('self_cognition.py', run_name='__main__')
"""


def _bundle() -> bytes:
    import io
    import zipfile

    example = ROOT / "examples" / "self_cognition.py"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train.py", TRAIN)
        z.writestr("self_cognition.py", example.read_text())
    return buf.getvalue()


def _real_executor(env: Any, token: str, tmp_path: Any, assets_dir: Any, sys_sample_s: float = 5.0) -> Any:
    return real_executor(env, token, tmp_path / token[-8:], assets_dir=str(assets_dir), sys_sample_s=sys_sample_s)


@pytest.mark.slow
def test_a_worker_reporting_success_without_running_is_caught_and_the_job_succeeds_on_an_honest_worker(
    scheduler_env, tmp_path, tiny_model_dir, self_cognition_file
):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    cheat = InProcessWorker(c, create_worker_token(c, "mallory"), "cheater", [cpu_group()])
    cheat.register()
    r = c.post(f"{API}{routes.JOBS}", files={"file": ("job.zip", _bundle())}, data={"entrypoint": "train.py"},
               headers=auth(user))
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    dispatch_once(env)

    # the cheater downloads nothing, runs nothing: made-up metrics, then "succeeded"
    assert cheat.start(jid, 1).status_code == 200
    fake = [{"step": s, "ts": float(s), "metrics": {"loss": 1.0 / s, "grad_norm": 0.5}} for s in range(1, 7)]
    assert cheat.metrics(jid, 1, fake).status_code == 200
    with _a_trusted_worker_is_live(env):
        assert cheat.finish(jid, 1).json()["state"] == "validating"
    assert job_view(c, user, jid)["state"] == "validating", "not succeeded while its result is unchecked"

    # the platform's pool replays the first 3 steps for real, with the same seed and data
    pool_token = create_worker_token(c, "platform", trusted=True)
    pool = InProcessWorker(c, pool_token, "pool", [cpu_group()])
    pool.register()
    dispatch_once(env)
    executor = _real_executor(env, pool_token, tmp_path, tiny_model_dir.parent)
    replay = _replay_of(env, jid)
    result = executor.run_attempt(replay.id, 1)
    assert result is not None and result.state == "succeeded", result
    with env.rt.db.session() as s:
        steps = [m for (m,) in s.execute(sa.text(f"SELECT step FROM metrics WHERE job_id = '{replay.id}'"))]
    assert steps and max(steps) == 3, f"the replay stops after step 3 (TWINKLE_STOP_AFTER_STEPS): {steps}"

    job = job_view(c, user, jid)
    assert job["state"] == "queued" and job["attempts"][0]["validation"] == "unverified", job
    assert workers_by_name(c, user)["cheater"]["reputation"] < env.settings.min_reputation

    # requeued on the honest worker, run for real; a trusted pool's success is final
    assert pool.heartbeat().status_code == 200  # the replay outlasted the test's 5 s lease
    dispatch_once(env)
    job = job_view(c, user, jid)
    assert job["attempt"] == 2 and job["worker_id"] == pool.worker_id, job
    result = executor.run_attempt(jid, 2)
    assert result is not None and result.state == "succeeded", result
    job = job_view(c, user, jid)
    assert job["state"] == "succeeded" and job["attempts"][1]["worker_id"] == pool.worker_id
    records = c.get(f"{API}{routes.path(routes.JOB_METRICS, job_id=jid)}", headers=auth(user)).json()["records"]
    # training records only: the worker's sys/ system-use samples (issue 18) carry no loss
    honest = [r["metrics"]["loss"] for r in records if r["attempt"] == 2 and "loss" in r["metrics"]]
    assert len(honest) == 6 and honest[:3] != [f["metrics"]["loss"] for f in fake[:3]]


def test_a_reputable_donor_that_fails_a_check_keeps_working_but_never_gets_that_job_back(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user, jid, donor = _donor_success(env, [], gpu=True)
    with env.rt.db.session() as s:  # a long-standing donor: one mismatch does not ban it
        s.execute(sa.text(f"UPDATE workers SET reputation = 1.0 WHERE id = '{donor.worker_id}'"))
        s.commit()
    # the pool offers 2 ranks: for these 1-rank jobs the donor's 1-rank slot is the best fit, so only the rule
    # keeps the job away from it
    pool, _ = _pool_replays(env, jid, CURVE, gpu=True, ranks=2)
    assert workers_by_name(c, user)["donor"]["reputation"] == pytest.approx(0.5)
    second = submit_script(c, user, GPU_JOB).json()["id"]
    for w in (donor, pool):
        assert w.heartbeat().status_code == 200
    dispatch_once(env)
    assert job_view(c, user, jid)["worker_id"] == pool.worker_id, "the job never goes back to the donor it caught"
    assert job_view(c, user, second)["worker_id"] == donor.worker_id, "the donor still gets other work"


def test_a_replay_goes_only_to_a_trusted_worker_and_never_holds_up_the_owners_jobs(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user, jid, donor = _donor_success(env, CURVE)
    other = InProcessWorker(c, create_worker_token(c, "bob"), "other-donor", [cpu_group()])
    other.register()
    assert donor.heartbeat().status_code == 200
    dispatch_once(env)
    replay = _replay_of(env, jid)
    with env.rt.db.session() as s:
        row = s.get(JobModel, replay.id)
        assert row is not None and row.state == "queued" and row.pending_reason == "waiting for a free trusted worker"
    later = submit_script(c, user, CPU_JOB).json()["id"]
    dispatch_once(env)
    assert job_view(c, user, later)["state"] == "assigned", "the owner's next job is not stuck behind the replay"
    pool = InProcessWorker(c, create_worker_token(c, "platform", trusted=True), "pool", [cpu_group()])
    pool.register()
    dispatch_once(env)
    assert pool.start(replay.id, 1).status_code == 200


@pytest.mark.slow
def test_an_honest_donor_running_the_real_example_is_validated_by_the_real_replay(
    scheduler_env, tmp_path, tiny_model_dir, self_cognition_file
):
    """Both runs are the real worker executor training the tiny model, sampling system use every 0.2 s."""
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    donor_token = create_worker_token(c, "bob")
    donor = InProcessWorker(c, donor_token, "donor", [cpu_group()])
    donor.register()
    r = c.post(f"{API}{routes.JOBS}", files={"file": ("job.zip", _bundle())}, data={"entrypoint": "train.py"},
               headers=auth(user))
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    dispatch_once(env)
    honest = _real_executor(env, donor_token, tmp_path, tiny_model_dir.parent, sys_sample_s=0.2)
    with _a_trusted_worker_is_live(env):
        result = honest.run_attempt(jid, 1)
    assert result is not None and result.state == "succeeded", result
    assert job_view(c, user, jid)["state"] == "validating"

    pool_token = create_worker_token(c, "platform", trusted=True)
    pool = InProcessWorker(c, pool_token, "pool", [cpu_group()])
    pool.register()
    dispatch_once(env)
    replay = _replay_of(env, jid)
    result = _real_executor(env, pool_token, tmp_path, tiny_model_dir.parent, sys_sample_s=0.2).run_attempt(
        replay.id, 1)
    assert result is not None and result.state == "succeeded", result
    with env.rt.db.session() as s:
        samples = s.scalar(sa.text(f"SELECT count(*) FROM metrics WHERE job_id = '{jid}'"))
    assert samples > 6, "the donor posted system samples besides its 6 training records"

    job = job_view(c, user, jid)
    assert job["state"] == "succeeded" and job["attempts"][0]["validation"] == "validated", job
    donor_row = workers_by_name(c, user)["donor"]
    assert donor_row["validated_attempts"] == 1 and donor_row["reputation"] > 0.5
