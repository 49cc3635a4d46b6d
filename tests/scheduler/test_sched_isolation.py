"""Isolation is declared and chosen: workers register how they sandbox jobs, jobs run only on sandboxed workers
unless their owner opts out, and a job that cannot match for that reason says so (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest

from scheduler.services import dispatch
from scheduler.services.matching import Need, Offer, QueuedJob, ShapeCatalog, WorkerView, plan
from scheduler.testing import InProcessWorker, auth, create_user, create_worker_token, submit_script
from scheduler.testing.factories import CPU_JOB, cpu_group, gpu_group, probe_for

# --- the matcher, pure -------------------------------------------------------------------------------------------

def gpu(ranks: int) -> Offer:
    return Offer("cuda", ranks, 80.0, "H100")


def test_a_job_never_lands_on_an_unsandboxed_worker_even_when_it_is_the_best_fit():
    workers = [WorkerView("bare", (gpu(1),), sandboxed=False), WorkerView("boxed", (gpu(8),))]
    result = plan(workers, [QueuedJob("j", "u", (Need("cuda", 1),))])
    assert [(a.job_id, a.worker_id) for a in result.assignments] == [("j", "boxed")]


def test_an_opted_out_job_may_use_an_unsandboxed_worker():
    workers = [WorkerView("bare", (gpu(1),), sandboxed=False)]
    result = plan(workers, [QueuedJob("j", "u", (Need("cuda", 1),), allow_unsandboxed=True)])
    assert [(a.job_id, a.worker_id) for a in result.assignments] == [("j", "bare")]


def test_multi_group_jobs_respect_isolation_too():
    workers = [WorkerView("bare", (gpu(1), gpu(1)), sandboxed=False)]
    needs = (Need("cuda", 1, name="a"), Need("cuda", 1, name="b"))
    assert plan(workers, [QueuedJob("j", "u", needs)]).assignments == []
    assert plan(workers, [QueuedJob("j", "u", needs, allow_unsandboxed=True)]).assignments[0].worker_id == "bare"


def test_the_hold_reason_names_the_sandbox_and_the_opt_out():
    cat = ShapeCatalog([WorkerView("bare", (gpu(4),), sandboxed=False)])
    reason = cat.hold_reason((Need("cuda", 2),))
    assert reason.startswith("held: no sandboxed worker offers 2 cuda ranks")
    assert "1 live worker(s) without a sandbox" in reason and "--allow-unsandboxed" in reason
    assert cat.hold_reason((Need("cuda", 2),), allow_unsandboxed=True) is None
    # a request nobody could run at all keeps the plain reason
    assert cat.hold_reason((Need("cuda", 8),)) == "held: no registered worker offers 8 cuda ranks"


def test_a_held_unsandboxed_job_does_not_block_the_users_next_job():
    workers = [WorkerView("bare", (gpu(1),), sandboxed=False), WorkerView("cpu", (Offer("cpu", 1),))]
    jobs = [QueuedJob("gpu-job", "u", (Need("cuda", 1),)), QueuedJob("cpu-job", "u", (Need("cpu", 1),))]
    result = plan(workers, jobs)
    assert [a.job_id for a in result.assignments] == ["cpu-job"]
    assert "no sandboxed worker" in result.reasons["gpu-job"]


# --- through the API and the database ----------------------------------------------------------------------------

@pytest.fixture()
def env(scheduler_env):
    c = scheduler_env.client
    return scheduler_env, c, create_user(c, "alice"), create_worker_token(c)


def workers_by_name(c, token) -> dict[str, dict]:
    r = c.get("/api/v1/workers", headers=auth(token))
    assert r.status_code == 200, r.text
    return {w["name"]: w for w in r.json()["items"]}


def test_registration_stores_isolation_and_get_workers_shows_it(env):
    _, c, user, wtoken = env
    InProcessWorker(c, wtoken, "boxed", [cpu_group()], isolation="bwrap").register()
    InProcessWorker(c, create_worker_token(c), "pod", [cpu_group()], isolation="container").register()
    InProcessWorker(c, create_worker_token(c), "bare", [cpu_group()], isolation="none").register()
    # sends no isolation field
    InProcessWorker(c, create_worker_token(c), "old", [cpu_group()], isolation=None).register()
    got = {name: w["isolation"] for name, w in workers_by_name(c, user).items()}
    assert got == {"boxed": "bwrap", "pod": "container", "bare": "none", "old": "none"}


def test_registering_again_updates_the_declared_isolation(env):
    _, c, user, wtoken = env
    w = InProcessWorker(c, wtoken, "box", [cpu_group()], isolation="bwrap")
    w.register()
    w.isolation = "none"  # e.g. restarted where user namespaces are off, with the trusted-pool flag
    w.register()
    assert workers_by_name(c, user)["box"]["isolation"] == "none"


def test_an_unknown_isolation_is_a_4xx_that_lists_the_choices(env):
    _, c, _, wtoken = env
    body = {"name": "w", "hostname": "h", "device_groups": [cpu_group()], "isolation": "chroot"}
    r = c.post("/api/v1/workers/register", json=body, headers=auth(wtoken))
    assert r.status_code == 422
    assert "bwrap" in r.text and "container" in r.text and "none" in r.text


def test_a_job_waits_for_a_sandboxed_worker_and_says_why(env):
    scheduler_env, c, user, wtoken = env
    bare = InProcessWorker(c, wtoken, "bare", [cpu_group()], isolation="none")
    bare.register()
    job = submit_script(c, user, CPU_JOB).json()
    assert job["request"]["allow_unsandboxed"] is False
    assert job["pending_reason"].startswith("held: no sandboxed worker offers 1 cpu ranks")
    res = dispatch.dispatch_round(scheduler_env.rt.db, scheduler_env.rt.redis)
    assert res.assigned == []
    again = c.get(f"/api/v1/jobs/{job['id']}", headers=auth(user)).json()
    assert again["state"] == "queued" and "--allow-unsandboxed" in again["pending_reason"]

    boxed = InProcessWorker(c, create_worker_token(c), "boxed", [cpu_group()], isolation="bwrap")
    boxed.register()
    res = dispatch.dispatch_round(scheduler_env.rt.db, scheduler_env.rt.redis)
    assert [(s.job_id, s.worker_id) for s in res.assigned] == [(job["id"], boxed.worker_id)]


@pytest.mark.parametrize("how", ["form", "request"])
def test_the_owner_opts_out_per_job(env, how):
    scheduler_env, c, user, wtoken = env
    bare = InProcessWorker(c, wtoken, "bare", [gpu_group(1)], isolation="none")
    bare.register()
    if how == "form":
        r = submit_script(c, user, CPU_JOB, request={"device_groups": [{"ranks": 1, "device_type": "cuda"}]},
                          allow_unsandboxed="true")
    else:
        r = submit_script(c, user, CPU_JOB, request={"device_groups": [{"ranks": 1, "device_type": "cuda"}],
                                                     "allow_unsandboxed": True})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["request"]["allow_unsandboxed"] is True
    assert job["pending_reason"] == "waiting for the dispatcher"
    res = dispatch.dispatch_round(scheduler_env.rt.db, scheduler_env.rt.redis)
    assert [(s.job_id, s.worker_id) for s in res.assigned] == [(job["id"], bare.worker_id)]


def test_a_bad_opt_out_value_is_listed_with_the_other_problems(env):
    _, c, user, _ = env
    r = c.post("/api/v1/jobs", files={"file": ("train.py", b"x = (")},
               data={"allow_unsandboxed": "maybe", "request": json.dumps({"device_groups": []})}, headers=auth(user))
    assert r.status_code == 422
    fields = r.json()["error"]["fields"]
    assert "allow_unsandboxed" in fields and "file" in fields


@pytest.mark.parametrize("isolation", ["bwrap", "container", "none", None])
def test_the_real_worker_client_declares_what_it_is_given(env, isolation):
    """worker.client.WorkerClient against the real API: the declared isolation is what the API stores."""
    import httpx

    from worker.client import WorkerClient

    _, c, user, wtoken = env

    def to_app(request: httpx.Request) -> httpx.Response:  # the client's request, served by the app in process
        r = c.request(request.method, request.url.raw_path.decode(), content=request.content, headers=request.headers)
        return httpx.Response(r.status_code, content=r.content, headers={"content-type": r.headers["content-type"]})

    client = WorkerClient("http://testserver", wtoken, transport=httpx.MockTransport(to_app), retries=1)
    client.register("real", "real", [cpu_group()], isolation=isolation, probe=probe_for([cpu_group()]))
    assert workers_by_name(c, user)["real"]["isolation"] == (isolation or "none")
