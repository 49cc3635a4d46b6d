"""A donor holds one credential, its worker token, and it reaches no further than its own assignments: no broker
or Redis URL at registration, no claim of another worker's assignment; one live worker per token (a second
registration supersedes the first, visibly); revocation by the owner or the admin stops assignments at the next
heartbeat or claim; where approval is required, a new token's workers get nothing until an admin approves."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from scheduler.db import WorkerModel
from scheduler.services import dispatch
from scheduler.settings import Settings
from scheduler.testing import InProcessWorker, auth, create_user, create_worker_token, submit_script
from scheduler.testing.factories import ADMIN_TOKEN, CPU_JOB, cpu_group


def run_round(env):
    return dispatch.dispatch_round(env.rt.db, env.rt.redis)


def workers(c, token) -> dict[str, dict]:
    r = c.get("/api/v1/workers", headers=auth(token))
    assert r.status_code == 200, r.text
    return {w["id"]: w for w in r.json()["items"]}


def job(c, user, jid) -> dict:
    return c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()


# ---------------------------------------------------------------- 1. nothing beyond its own assignments


def test_registration_hands_the_donor_no_broker_or_redis_credential(scheduler_env):
    c = scheduler_env.client
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    body = w.register()
    assert set(body) == {"worker_id", "heartbeat_interval_s", "lease_s", "approved", "claim_wait_s"}
    text = str(body).lower()
    assert "redis" not in text and scheduler_env.settings.effective_redis_url not in str(body)


def test_a_worker_token_cannot_claim_or_start_another_workers_assignment(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    honest = InProcessWorker(c, create_worker_token(c), "honest", [cpu_group()])
    honest.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    assert [s.worker_id for s in run_round(env).assigned] == [honest.worker_id]
    thief = InProcessWorker(c, create_worker_token(c), "thief", [cpu_group()])
    thief.register()
    # the thief's token with the honest worker's id: that worker is not registered with this token
    thief_as_honest = InProcessWorker(c, thief.token, "thief", [cpu_group()])
    thief_as_honest.worker_id = honest.worker_id
    r = thief_as_honest.claim()
    assert r.status_code == 404 and r.json()["error"]["code"] == "worker_not_found"
    assert thief.claim().status_code == 204
    r = thief.start(jid, 1)
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_attempt"
    assert honest.claim().json() == {"job_id": jid, "attempt": 1}


def test_a_claim_waits_for_the_dispatchers_poke_and_answers_at_once(scheduler_env):
    """The long poll: a claim waiting up to 10 s returns as soon as the dispatcher commits an assignment."""
    import threading
    import time

    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    got: dict = {}

    def claim() -> None:
        t0 = time.monotonic()
        r = w.claim(wait=10)
        got.update(status=r.status_code, body=r.json() if r.status_code == 200 else None, s=time.monotonic() - t0)

    t = threading.Thread(target=claim)
    t.start()
    time.sleep(0.5)  # the claim is waiting (nothing is assigned yet)
    run_round(env)
    t.join(15)
    assert got["status"] == 200 and got["body"] == {"job_id": jid, "attempt": 1}
    assert got["s"] < 4.5, got  # woken, not found by the 5 s fallback poll


# ---------------------------------------------------------------- 2. one live worker per token


def test_a_second_registration_with_the_same_token_supersedes_the_first_visibly(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    token = create_worker_token(c)
    first = InProcessWorker(c, token, "first", [cpu_group()])
    first.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    assert first.start(jid, 1).status_code == 200
    second = InProcessWorker(c, token, "stolen-copy", [cpu_group()])
    second.register()
    assert second.worker_id != first.worker_id
    for r in (first.heartbeat(), first.claim()):
        assert r.status_code == 410, r.text
        err = r.json()["error"]
        assert err["code"] == "worker_superseded" and second.worker_id in err["message"]
        assert "superseded" in err["message"]
    listed = workers(c, user)
    assert listed[first.worker_id]["state"] == "superseded"
    assert listed[first.worker_id]["superseded_by"] == second.worker_id
    assert "superseded by worker " + second.worker_id in listed[first.worker_id]["status"]
    assert listed[second.worker_id]["state"] == "live"
    # what the first was running is requeued at once, and its writes are refused
    assert job(c, user, jid)["state"] == "queued"
    assert first.logs(jid, 1, "still here").status_code == 409
    assert second.heartbeat().status_code == 200


def test_the_same_daemon_registering_again_keeps_working_under_its_new_id(scheduler_env):
    c = scheduler_env.client
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    old = w.worker_id
    w.register()  # a restart
    assert w.worker_id != old
    assert w.heartbeat().status_code == 200 and w.claim().status_code == 204



def test_registering_again_keeps_the_donors_reputation_so_a_bad_record_cannot_be_shed(scheduler_env):
    """A donor whose spot checks failed must not start afresh by restarting its daemon or renaming it."""
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    token = create_worker_token(c)
    w = InProcessWorker(c, token, "box", [cpu_group()])
    w.register()
    with env.rt.db.session() as s:  # what failed validations left
        s.execute(sa.update(WorkerModel).where(WorkerModel.id == w.worker_id).values(
            reputation=0.1, validated_attempts=7))
        s.commit()
    old = w.worker_id
    w.register()  # a restart
    renamed = InProcessWorker(c, token, "fresh-name", [cpu_group()])
    renamed.register()  # a copy under another name supersedes it and inherits the same record
    listed = workers(c, user)
    for wid in (w.worker_id, renamed.worker_id):
        assert wid != old
        assert (listed[wid]["reputation"], listed[wid]["validated_attempts"]) == (0.1, 7), listed[wid]
    # below MIN_REPUTATION it still gets no job
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    assert run_round(env).assigned == []
    assert job(c, user, jid)["state"] == "queued"
    # another token's worker starts from the default record
    other = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    other.register()
    assert workers(c, user)[other.worker_id]["validated_attempts"] == 0


# ---------------------------------------------------------------- 2. revocation


@pytest.fixture()
def scheduler_overrides():
    # a long auth cache: revocation must not wait for it
    return {"auth_cache_s": 3600.0}


@pytest.mark.parametrize("who", ["admin", "owner", "the token itself"])
def test_a_revoked_token_stops_getting_work_at_its_next_heartbeat_or_claim(scheduler_env, who):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    owner = create_user(c, "dora")
    token = create_worker_token(c, owner="dora")
    w = InProcessWorker(c, token, "box", [cpu_group()])
    w.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    assert w.start(jid, 1).status_code == 200
    assert w.heartbeat([(jid, 1)]).status_code == 200  # the token is in the auth cache now
    by = {"admin": ADMIN_TOKEN, "owner": owner, "the token itself": token}[who]
    r = c.post(f"/api/v1/workers/{w.worker_id}/revoke", headers=auth(by))
    assert r.status_code == 204, r.text
    for r in (w.heartbeat([(jid, 1)]), w.claim()):
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "token_revoked"
    assert w.logs(jid, 1, "after revocation").status_code in (403, 409)
    got = job(c, user, jid)
    assert got["state"] == "queued" and got["attempts"][0]["state"] == "lost"
    assert run_round(env).assigned == []  # never assigned to the revoked worker again
    assert workers(c, user)[w.worker_id]["state"] == "revoked"
    r = c.post("/api/v1/workers/register", json={"name": "again", "device_groups": [cpu_group()]},
               headers=auth(token))
    assert r.status_code == 403 and r.json()["error"]["code"] == "token_revoked"


def test_only_the_admin_the_owner_or_the_token_itself_may_revoke(scheduler_env):
    c = scheduler_env.client
    stranger = create_user(c, "mallory")
    w = InProcessWorker(c, create_worker_token(c, owner="dora"), "box", [cpu_group()])
    w.register()
    other_worker = InProcessWorker(c, create_worker_token(c, owner="mallory-box"), "other", [cpu_group()])
    other_worker.register()
    for by in (stranger, other_worker.token):
        r = c.post(f"/api/v1/workers/{w.worker_id}/revoke", headers=auth(by))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert w.heartbeat().status_code == 200
    assert c.post("/api/v1/workers/nope/revoke", headers=auth(ADMIN_TOKEN)).status_code == 404


# ---------------------------------------------------------------- 2. approval


@pytest.mark.parametrize("scheduler_overrides", [{"require_worker_approval": True}])
def test_where_approval_is_required_a_new_worker_registers_but_gets_no_job_until_approved(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    assert w.register()["approved"] is False
    listed = workers(c, user)[w.worker_id]
    assert listed["approved"] is False and listed["status"] == "awaiting approval"
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    assert run_round(env).assigned == []
    assert w.claim().status_code == 204 and w.heartbeat().status_code == 200
    r = c.post(f"/api/v1/workers/{w.worker_id}/approve", headers=auth(w.token))
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
    assert c.post(f"/api/v1/workers/{w.worker_id}/approve", headers=auth(ADMIN_TOKEN)).status_code == 204
    assert [s.job_id for s in run_round(env).assigned] == [jid]
    assert w.claim().json() == {"job_id": jid, "attempt": 1}
    assert workers(c, user)[w.worker_id]["status"] == "live"
    # approval belongs to the token: the same donor restarting needs none again
    assert w.register()["approved"] is True


@pytest.mark.parametrize("scheduler_overrides", [{"require_worker_approval": True}])
def test_a_pre_approved_token_for_a_trusted_pool_needs_no_approval(scheduler_env):
    c = scheduler_env.client
    r = c.post("/api/v1/worker-tokens", json={"owner": "pool", "pre_approved": True}, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201
    assert InProcessWorker(c, r.json()["token"], "pool-0", [cpu_group()]).register()["approved"] is True


def test_approval_is_required_by_default_in_production_only():
    assert Settings(environment="development").worker_approval_required is False
    prod = Settings(environment="production", secret_key="x" * 40)
    assert prod.worker_approval_required is True
    assert Settings(environment="production", secret_key="x" * 40, require_worker_approval=False
                    ).worker_approval_required is False


def test_the_admin_cli_revokes_and_another_api_process_stops_the_worker_despite_its_auth_cache(scheduler_env):
    """``twinkle-scheduler revoke-worker`` writes the database directly, as another API process would: this
    process's auth cache still holds the token, yet the next heartbeat and claim are refused."""
    from typer.testing import CliRunner

    from scheduler.cli import app

    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    assert w.start(jid, 1).status_code == 200 and w.heartbeat([(jid, 1)]).status_code == 200
    cli_env = {"TWINKLE_SCHEDULER_DATABASE_URL": env.settings.database_url}
    result = CliRunner().invoke(app, ["revoke-worker", w.worker_id], env=cli_env)
    assert result.exit_code == 0, result.output
    for r in (w.heartbeat([(jid, 1)]), w.claim()):
        assert r.status_code == 403 and r.json()["error"]["code"] == "token_revoked", r.text
    assert job(c, user, jid)["state"] == "queued"
    result = CliRunner().invoke(app, ["revoke-worker", "no-such-worker"], env=cli_env)
    assert result.exit_code == 1 and "no worker" in result.output


@pytest.mark.parametrize("scheduler_overrides", [{"require_worker_approval": True}])
def test_the_admin_cli_approves(scheduler_env):
    from typer.testing import CliRunner

    from scheduler.cli import app

    c = scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    cli_env = {"TWINKLE_SCHEDULER_DATABASE_URL": scheduler_env.settings.database_url}
    result = CliRunner().invoke(app, ["approve-worker", w.worker_id], env=cli_env)
    assert result.exit_code == 0, result.output
    assert workers(c, user)[w.worker_id]["approved"] is True


def test_the_owner_revokes_with_twinkle_submit_and_lists_the_workers(scheduler_env, capsys):
    from scheduler.testing import serving
    from submit.cli import main

    c = scheduler_env.client
    owner = create_user(c, "dora")
    w = InProcessWorker(c, create_worker_token(c, owner="dora"), "dora-box", [cpu_group()])
    w.register()
    with serving(scheduler_env.app) as url:
        base = ["--server", url, "--token", owner]
        with pytest.raises(SystemExit) as done:
            main(["workers", *base])
        assert done.value.code in (0, None)
        assert w.worker_id in capsys.readouterr().out
        with pytest.raises(SystemExit) as done:
            main(["revoke-worker", w.worker_id, *base])
        assert done.value.code in (0, None), capsys.readouterr()
        assert "revoked" in capsys.readouterr().out
    assert w.claim().status_code == 403


@pytest.mark.parametrize("scheduler_overrides", [{"require_worker_approval": True}])
def test_a_pool_token_is_shared_by_its_nodes_one_live_worker_per_name(scheduler_env):
    """The Helm chart's DaemonSet runs every node with one token: a pool token keeps one live worker per name."""
    c = scheduler_env.client
    user = create_user(c, "alice")
    r = c.post("/api/v1/worker-tokens", json={"owner": "lab", "pool": True}, headers=auth(ADMIN_TOKEN))
    token = r.json()["token"]
    a, b = (InProcessWorker(c, token, name, [cpu_group()]) for name in ("node-a", "node-b"))
    assert a.register()["approved"] is True and b.register()["approved"] is True  # pre-approved
    assert a.heartbeat().status_code == 200 and b.heartbeat().status_code == 200
    old = a.worker_id
    a.register()  # node-a's pod restarted: supersedes node-a only
    listed = workers(c, user)
    assert listed[old]["state"] == "superseded" and listed[b.worker_id]["state"] == "live"
    assert b.claim().status_code == 204


def test_upgrading_to_0005_keeps_every_worker_and_approves_the_tokens_that_existed(tmp_path):
    """0005 adds columns only: a SQLite table rebuild of api_tokens would cascade-delete every worker."""
    import sqlalchemy as sa

    from scheduler.db import migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0004")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO api_tokens (id, token_hash, kind, created_at) VALUES ('t1', 'h', 'worker', '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO workers (id, token_id, name, hostname, state, device_groups, registered_at, "
            "last_heartbeat_at, lease_expires_at, jobs_run, gpu_seconds) VALUES ('w1', 't1', 'old', 'h', 'live', "
            "'[]', '2026-01-01', '2026-01-01', '2026-01-01', 3, 0.0)"
        )
    migrate(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT id, jobs_run FROM workers").all() == [("w1", 3)]
        row = conn.exec_driver_sql("SELECT approved_at, revoked_at, pool FROM api_tokens").one()
        assert row[0] is not None and row[1] is None and not row[2]
    engine.dispose()
