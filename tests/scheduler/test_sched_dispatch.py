"""Dispatch (assignments claimed over HTTP, woken through the real Redis), fencing, the reaper, the start
deadline and cancel of running jobs."""

from __future__ import annotations

import datetime as dt

import pytest
import redis
import sqlalchemy as sa

from scheduler.db import AttemptModel, JobModel, WorkerModel
from scheduler.runtime import redis_client
from scheduler.services import assignments, dispatch
from scheduler.tasks.dispatcher import scheduled_tasks
from scheduler.testing import InProcessWorker, auth, create_user, create_worker_token, submit_script
from scheduler.testing.factories import CPU_JOB, cpu_group, gpu_group


def run_round(env):
    return dispatch.dispatch_round(env.rt.db, env.rt.redis)


def reap(env):
    res = dispatch.reap(env.rt.db, start_deadline_s=env.settings.start_deadline_s, max_attempts=env.settings.max_attempts)
    from scheduler.services import events

    events.requeued(env.rt.db, env.rt.redis, env.rt.storage, res.requeued)
    return res


@pytest.fixture()
def setup(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    wtoken = create_worker_token(c)
    w = InProcessWorker(c, wtoken, "box", [cpu_group()])
    w.register()
    return scheduler_env, c, user, w


def test_the_assignment_is_claimed_by_its_worker_only_and_woken_through_redis(setup):
    env, c, user, w = setup
    other = InProcessWorker(c, create_worker_token(c), "other", [gpu_group(1)])
    other.register()
    job = submit_script(c, user, CPU_JOB).json()
    assert w.claim().status_code == 204  # nothing assigned yet
    res = run_round(env)
    assert [(s.job_id, s.attempt, s.worker_id) for s in res.assigned] == [(job["id"], 1, w.worker_id)]
    r = redis.Redis.from_url(env.settings.redis_url)
    assert r.lrange(f"twinkle:wake:{w.worker_id}", 0, -1) == [b"1"]  # the poke for its waiting claim
    assert not r.exists(f"twinkle:wake:{other.worker_id}")
    assert w.claim().json() == {"job_id": job["id"], "attempt": 1}
    assert other.claim().status_code == 204
    # A second round assigns nothing again: the job is assigned in the database. While the first claim holds it,
    # another claim (a pooled worker holds one per device) gets nothing; once the hold expires (the first claim's
    # answer was lost, say) it is handed out again until started.
    assert run_round(env).assigned == []
    assert w.claim().status_code == 204
    held = f"twinkle:claimed:{job['id']}:1"
    assert 0 < r.ttl(held) <= assignments.CLAIM_HOLD_S
    r.delete(held)  # the hold expired
    assert w.claim().json() == {"job_id": job["id"], "attempt": 1}
    assert w.start(job["id"], 1).status_code == 200
    assert w.claim().status_code == 204
    got = c.get(f"/api/v1/jobs/{job['id']}", headers=auth(user)).json()
    assert got["state"] == "running" and got["attempt"] == 1 and got["worker_id"] == w.worker_id
    assert got["attempts"][0]["state"] == "running" and got["pending_reason"] is None


def test_full_life_start_logs_metrics_finish(setup):
    env, c, user, w = setup
    job = submit_script(c, user, CPU_JOB).json()
    run_round(env)
    jid = job["id"]
    assert w.logs(jid, 1, "too early").status_code == 409  # not started yet
    s = w.start(jid, 1)
    assert s.status_code == 200 and s.json()["entrypoint"] == "train.py" and s.json()["resume_from"] is None
    assert w.start(jid, 1).status_code == 409  # the idempotency check: a second start is refused
    assert w.bundle(jid, 1).content[:2] == b"PK"
    assert w.logs(jid, 1, "step 1", "step 2").json() == {"accepted": 2}
    assert w.metrics(jid, 1, [{"step": 1, "ts": 1.0, "metrics": {"loss": 2.5}}]).status_code == 200
    assert w.finish(jid, 1, "succeeded", 0).json() == {"job_id": jid, "attempt": 1, "state": "succeeded"}
    got = c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()
    assert got["state"] == "succeeded" and got["attempts"][0]["exit_code"] == 0
    assert c.get(f"/api/v1/jobs/{jid}/metrics", headers=auth(user)).json()["records"] == [
        {"attempt": 1, "step": 1, "ts": 1.0, "metrics": {"loss": 2.5}}
    ]
    # Logs were persisted to storage, so they outlive Redis.
    env.rt.redis.flushdb()
    text = c.get(f"/api/v1/jobs/{jid}/logs", headers=auth(user)).text
    assert "step 1\nstep 2\n" in text and "attempt 1 succeeded" in text
    assert w.logs(jid, 1, "late").status_code == 409
    workers = c.get("/api/v1/workers", headers=auth(user)).json()["items"]
    assert {x["name"]: x["jobs_run"] for x in workers}["box"] == 1


def test_fencing_refuses_stale_and_foreign_writes(setup):
    env, c, user, w = setup
    job = submit_script(c, user, CPU_JOB).json()
    run_round(env)
    jid = job["id"]
    w.start(jid, 1)
    intruder = InProcessWorker(c, create_worker_token(c, "mallory"), "evil", [gpu_group(1)])
    intruder.register()
    r = intruder.logs(jid, 1, "x")
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_attempt"
    assert w.logs(jid, 2, "x").status_code == 404
    # The worker re-registers (restart): attempt 1 is lost and the job requeued; attempt 1's writes are stale.
    w.register()
    for r in (w.logs(jid, 1, "x"), w.metrics(jid, 1, []), w.finish(jid, 1), w.artifact(jid, 1, "output/a", b"x")):
        assert r.status_code == 409 and r.json()["error"]["code"] == "stale_attempt", r.text
    run_round(env)
    got = c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()
    assert got["attempt"] == 2 and [a["state"] for a in got["attempts"]] == ["lost", "assigned"]
    assert w.start(jid, 1).status_code == 409
    assert w.start(jid, 2).status_code == 200


def test_reaper_requeues_a_lost_workers_job_as_next_attempt_and_resumes(setup):
    env, c, user, w = setup
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    w.start(jid, 1)
    w.logs(jid, 1, "epoch 1")
    w.checkpoint(jid, 1, "ckpt-1", {"model.bin": b"weights"})
    with env.rt.db.session() as s:  # the lease runs out
        s.execute(sa.update(WorkerModel).values(lease_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
        s.commit()
    res = reap(env)
    assert res.lost_workers == [w.worker_id]
    got = c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()
    assert got["state"] == "queued" and "requeued" in got["pending_reason"]
    assert got["attempts"][0]["state"] == "lost"
    # The lost attempt's log is in storage; the reaper noted the requeue in it.
    log_key = f"users/{got['user_id']}/jobs/{jid}/attempts/1/logs.txt"
    assert "epoch 1" in env.rt.storage.get_bytes(log_key).decode()
    assert "requeued as attempt 2" in c.get(f"/api/v1/jobs/{jid}/logs", headers=auth(user)).text
    # A lost worker gets nothing; when it heartbeats again it is live and told to stop attempt 1.
    assert run_round(env).assigned == []
    hb = w.heartbeat([(jid, 1)])
    assert hb.json()["cancel"] == [{"job_id": jid, "attempt": 1}]
    res = run_round(env)
    assert [(s.job_id, s.attempt) for s in res.assigned] == [(jid, 2)]
    started = w.start(jid, 2).json()
    assert started["resume_from"]["attempt"] == 1
    assert [f["path"] for f in started["resume_from"]["files"]] == ["output/ckpt-1/model.bin"]
    url = started["resume_from"]["files"][0]["url"]
    assert c.get(url.replace("http://testserver", "")).content == b"weights"


def test_start_deadline_dispatches_again(setup):
    env, c, user, w = setup
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    with env.rt.db.session() as s:  # nobody started it in time (the message was lost, say)
        s.execute(sa.update(JobModel).values(assigned_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))
        s.commit()
    res = reap(env)
    assert [r.job_id for r in res.requeued] == [jid] and res.lost_workers == []
    res = run_round(env)
    assert [(s.job_id, s.attempt) for s in res.assigned] == [(jid, 2)]
    with env.rt.db.session() as s:
        states = s.execute(sa.select(AttemptModel.n, AttemptModel.state).order_by(AttemptModel.n)).all()
    assert [tuple(x) for x in states] == [(1, "expired"), (2, "assigned")]
    assert w.claim().json() == {"job_id": jid, "attempt": 2}  # the claim hands out the live attempt only
    assert w.start(jid, 1).status_code == 409  # a late start of the first must not run


def test_max_attempts_fails_the_job(setup, scheduler_env):
    env, c, user, w = setup
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    for n in range(1, env.settings.max_attempts + 1):
        run_round(env)
        assert w.start(jid, n).status_code == 200
        w.register()  # restart: requeued
    got = c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()
    assert got["state"] == "failed" and "gave up after 5 attempts" in got["error"]


def test_cancel_running_goes_through_heartbeat_and_finish(setup):
    env, c, user, w = setup
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    w.start(jid, 1)
    r = c.post(f"/api/v1/jobs/{jid}/cancel", headers=auth(user))
    assert r.json()["state"] == "cancelling"
    # The worker was offline when the cancel was sent; its next heartbeat carries it.
    assert w.heartbeat([(jid, 1)]).json()["cancel"] == [{"job_id": jid, "attempt": 1}]
    assert w.finish(jid, 1, "failed", -15).json()["state"] == "cancelled"
    assert c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()["state"] == "cancelled"
    assert w.heartbeat([]).json()["cancel"] == []


def test_cancel_assigned_job_frees_the_slot_at_once(setup):
    env, c, user, w = setup
    a = submit_script(c, user, CPU_JOB).json()["id"]
    b = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    assert c.post(f"/api/v1/jobs/{a}/cancel", headers=auth(user)).json()["state"] == "cancelled"
    assert w.start(a, 1).status_code == 409
    assert [s.job_id for s in run_round(env).assigned] == [b]


def test_fair_share_and_pending_reasons_through_the_db(setup):
    env, c, user, w = setup
    bob = create_user(c, "bob")
    a_ids = [submit_script(c, user, CPU_JOB).json()["id"] for _ in range(2)]
    b_id = submit_script(c, bob, CPU_JOB).json()["id"]
    res = run_round(env)
    assert [s.job_id for s in res.assigned] == [a_ids[0]]
    w.start(a_ids[0], 1)
    w.finish(a_ids[0], 1)
    res = run_round(env)
    assert [s.job_id for s in res.assigned] == [b_id]  # bob's turn before alice's second job
    got = c.get(f"/api/v1/jobs/{a_ids[1]}", headers=auth(user)).json()
    assert got["pending_reason"].startswith("waiting for a free worker: 1 live worker")


def test_heartbeat_of_unknown_worker_and_dispatcher_tasks(setup):
    env, c, user, w = setup
    r = c.post("/api/v1/workers/nope/heartbeat", json={"running": []}, headers=auth(w.token))
    assert r.status_code == 404 and "register first" in r.json()["error"]["message"]
    names = {t.name: t for t in scheduled_tasks(env.rt)}
    assert set(names) == {"reap", "match"}
    submit_script(c, user, CPU_JOB)
    assert w.heartbeat().status_code == 200  # the test's short lease may have run out on a loaded machine
    assert len(names["match"].run().assigned) == 1


def test_a_pooled_workers_waiting_claims_each_get_a_different_assignment(scheduler_env):
    """A pool of two devices holds two claims; with two one-device jobs assigned, each claim gets its own job (not
    both the oldest: then one device would idle until the next look at the database)."""
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "pool", [{**cpu_group(2), "pooled": True}])
    w.register()
    jids = [submit_script(c, user, CPU_JOB).json()["id"] for _ in range(2)]
    assert sorted(s.job_id for s in run_round(env).assigned) == sorted(jids)
    got = [w.claim().json(), w.claim().json()]
    assert sorted(g["job_id"] for g in got) == sorted(jids)
    for g in got:
        assert w.start(g["job_id"], g["attempt"]).status_code == 200
    assert w.claim().status_code == 204


def test_a_stalled_redis_fails_the_dispatchers_poke_in_seconds_instead_of_hanging_its_round(scheduler_env):
    """A Redis that accepts connections and never answers (a paused server, a black-holed network) must not wedge
    the dispatcher: the match and the reaper share its loop. The poke gives up within the client's socket
    timeouts; the assignment is committed already, and the worker's claim finds it at its next look."""
    import socket
    import threading
    import time

    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepted by the kernel, never read: every command waits for an answer that never comes
    stalled = redis_client(f"redis://127.0.0.1:{listener.getsockname()[1]}/0")  # what the dispatcher builds
    outcome: list[object] = []

    def round_() -> None:
        try:
            outcome.append(dispatch.dispatch_round(env.rt.db, stalled))
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcome.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=round_, daemon=True)
    thread.start()
    thread.join(60)
    try:
        assert outcome, "the dispatcher's round was still hanging on Redis after 60 s"
        assert time.monotonic() - t0 < 30
        res = outcome[0]
        assert isinstance(res, dispatch.RoundResult), res
        assert [(s.job_id, s.attempt) for s in res.assigned] == [(jid, 1)]
    finally:
        listener.close()
    assert w.claim().json() == {"job_id": jid, "attempt": 1}  # committed: the claim finds it without the poke


def test_the_api_closes_the_redis_connections_of_waiting_claims_when_it_shuts_down(
    scheduler_db_url, redis_url, tmp_path
):
    """A claim waits on a Redis connection of the API's waker; at shutdown those are closed, not left open on
    Redis until the process is gone."""
    from fastapi.testclient import TestClient

    from scheduler.testing.fixtures import make_app, make_settings, reset_database

    app, rt = make_app(make_settings(tmp_path, database_url=scheduler_db_url, redis_url=redis_url,
                                     run_migrations=False))
    reset_database(rt.db)
    r = redis.Redis.from_url(redis_url, decode_responses=True)

    def wakers() -> set[str]:
        return {c["id"] for c in r.client_list() if c.get("name") == assignments.CLIENT_NAME}

    before = wakers()  # another process's, if any
    try:
        with TestClient(app) as c:
            w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
            w.register()
            assert w.claim(wait=0.2).status_code == 204
            ours = wakers() - before
            assert ours, "the claim waited on the waker's connection"
        assert not ours & wakers(), "the API's shutdown closed them"
    finally:
        rt.close()
        r.close()
