"""Submitting, listing, reading and cancelling jobs, and every bad-input case (nothing stored on error)."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import httpx
import pytest
import sqlalchemy as sa

from scheduler.db import JobModel
from scheduler.testing import InProcessWorker, auth, create_user, create_worker_token, submit_script
from scheduler.testing.factories import cpu_group, gpu_group

SCRIPT = """
import twinkle
from twinkle import DeviceGroup, DeviceMesh
groups = [DeviceGroup(name='default', ranks=2, device_type='cuda')]
twinkle.initialize(mode='ray', nproc_per_node=8, groups=groups)
print('training')
"""


def stored_nothing(env) -> bool:
    with env.rt.db.session() as s:
        n_jobs = s.scalar(sa.select(sa.func.count()).select_from(JobModel))
    files = [p for p in (env.tmp_path / "storage").rglob("*") if p.is_file()]
    return n_jobs == 0 and files == []


def make_zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def test_submit_py_reads_device_groups_and_stores_a_zip_bundle(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    token = create_user(c, "alice")
    r = submit_script(c, token, SCRIPT, name="sft")
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "queued" and job["name"] == "sft" and job["entrypoint"] == "train.py"
    assert job["request"]["device_groups"] == [{"name": "default", "ranks": 2, "device_type": "cuda", "min_memory_gb": 0.0}]
    assert job["pending_reason"] == "held: no registered worker offers 2 cuda ranks"
    assert job["phase"] == "held" and job["queue_position"] is None  # a held job waits for a worker, not a turn
    key = f"users/{job['user_id']}/jobs/{job['id']}/bundle.zip"
    with zipfile.ZipFile(env.rt.storage.path_of(key)) as zf:
        assert zf.read("train.py").decode() == SCRIPT


def test_request_flags_override_the_script(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    req = {"device_groups": [{"name": "default", "ranks": 1, "device_type": "cpu"}]}
    job = submit_script(c, token, SCRIPT, request=req).json()
    assert job["request"]["device_groups"][0]["device_type"] == "cpu"
    assert job["request"]["device_groups"][0]["ranks"] == 1


def test_zip_bundle_with_entrypoint(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    data = make_zip({"main.py": SCRIPT, "lib/util.py": "X = 1\n"})
    r = c.post("/api/v1/jobs", files={"file": ("b.zip", data)}, data={"entrypoint": "main.py"}, headers=auth(token))
    assert r.status_code == 201, r.text
    assert r.json()["entrypoint"] == "main.py" and r.json()["request"]["device_groups"][0]["ranks"] == 2


def test_not_python_names_the_line_and_stores_nothing(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    r = submit_script(c, token, "import os\n\ndef broken(:\n    pass\n")
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "not_python" and "line 3" in err["message"]
    r = c.post("/api/v1/jobs", files={"file": ("notes.txt", b"hello")}, headers=auth(token))
    assert r.status_code == 422 and "neither a .py script nor a .zip" in r.json()["error"]["message"]
    r = c.post("/api/v1/jobs", files={"file": ("x.zip", b"not a zip")}, headers=auth(token))
    assert r.status_code == 422 and "not a valid zip" in r.json()["error"]["message"]
    assert stored_nothing(scheduler_env)


def test_every_problem_is_reported_at_once(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    data = make_zip({"other.py": "print(1)\n", "../evil.py": "x"})
    r = c.post(
        "/api/v1/jobs",
        files={"file": ("b.zip", data)},
        data={"request": json.dumps({"device_groups": [{"ranks": 0}]})},
        headers=auth(token),
    )
    assert r.status_code == 422
    fields = r.json()["error"]["fields"]
    assert "entrypoint" in fields and "other.py" in fields["entrypoint"]  # missing train.py, lists what is there
    assert "file" in fields and "../evil.py" in fields["file"]
    assert any(k.startswith("request.device_groups.0.ranks") for k in fields)
    r = c.post("/api/v1/jobs", files={"file": ("t.py", b"print(")}, data={"request": "{nope"}, headers=auth(token))
    assert set(r.json()["error"]["fields"]) == {"file", "request"}
    assert stored_nothing(scheduler_env)


def test_bundle_over_the_limit_is_413(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    big = b"# " + b"x" * (1024 * 1024 + 10) + b"\n"  # MAX_BUNDLE_MB is 1 in tests
    r = c.post("/api/v1/jobs", files={"file": ("t.py", big)}, headers=auth(token))
    assert r.status_code == 413 and "MAX_BUNDLE_MB" in r.json()["error"]["message"]
    huge = c.post(
        "/api/v1/jobs", content=b"x" * 100, headers={**auth(token), "Content-Type": "multipart/form-data; boundary=b",
                                                      "Content-Length": str(50 * 1024 * 1024)},
    )
    assert huge.status_code == 413  # refused from the header, before reading
    assert stored_nothing(scheduler_env)


def test_truncated_upload_is_400(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    req = httpx.Request("POST", "http://x/api/v1/jobs", files={"file": ("t.py", SCRIPT.encode())})
    body = req.read()
    cut = body[: len(body) - 40]
    r = c.post("/api/v1/jobs", content=cut, headers={**auth(token), "Content-Type": req.headers["content-type"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "truncated_upload"
    r = c.post("/api/v1/jobs", data={"name": "x"}, headers=auth(token))
    assert r.status_code == 422 and r.json()["error"]["fields"] == {"file": "multipart upload expected"}
    r = c.post("/api/v1/jobs", files={"script": ("t.py", b"1")}, headers=auth(token))
    assert r.status_code == 422 and r.json()["error"]["fields"] == {"file": "required"}
    assert stored_nothing(scheduler_env)


def test_another_users_job_is_404(scheduler_env):
    c = scheduler_env.client
    alice, bob = create_user(c, "alice"), create_user(c, "bob")
    job = submit_script(c, alice, SCRIPT).json()
    for method, path in [("get", ""), ("post", "/cancel"), ("get", "/logs"), ("get", "/metrics"), ("get", "/artifacts"),
                         ("get", "/logs/stream")]:
        r = getattr(c, method)(f"/api/v1/jobs/{job['id']}{path}", headers=auth(bob))
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "job_not_found"
    assert c.get("/api/v1/jobs", headers=auth(bob)).json() == {"items": [], "total": 0}


def a_worker_for_script(c) -> InProcessWorker:
    """A live worker that could run SCRIPT (2 cuda ranks), so its jobs queue for a turn instead of being held."""
    w = InProcessWorker(c, create_worker_token(c), "gpu-box", [gpu_group(ranks=2)])
    w.register()
    return w


def test_list_paginates_and_filters(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    a_worker_for_script(c)
    ids = [submit_script(c, token, SCRIPT, name=f"j{i}").json()["id"] for i in range(5)]
    c.post(f"/api/v1/jobs/{ids[0]}/cancel", headers=auth(token))
    page = c.get("/api/v1/jobs?limit=2&offset=1", headers=auth(token)).json()
    assert page["total"] == 5 and [j["id"] for j in page["items"]] == [ids[3], ids[2]]
    queued = c.get("/api/v1/jobs?state=queued", headers=auth(token)).json()
    assert queued["total"] == 4 and all(j["state"] == "queued" for j in queued["items"])
    assert sorted(j["queue_position"] for j in queued["items"]) == [1, 2, 3, 4]
    bad = c.get("/api/v1/jobs?state=sleeping", headers=auth(token))
    assert bad.status_code == 422 and "unknown state sleeping" in bad.json()["error"]["message"]
    assert c.get("/api/v1/jobs?limit=0", headers=auth(token)).status_code == 422


def test_queue_position_alternates_users(scheduler_env):
    c = scheduler_env.client
    alice, bob = create_user(c, "alice"), create_user(c, "bob")
    a_worker_for_script(c)
    a = [submit_script(c, alice, SCRIPT).json()["id"] for _ in range(3)]
    b = [submit_script(c, bob, SCRIPT).json()["id"] for _ in range(2)]
    pos = {jid: c.get(f"/api/v1/jobs/{jid}", headers=auth(tok)).json()["queue_position"]
           for tok, ids in ((alice, a), (bob, b)) for jid in ids}
    # round robin: a0, b0, a1, b1, a2
    assert [pos[a[0]], pos[b[0]], pos[a[1]], pos[b[1]], pos[a[2]]] == [1, 2, 3, 4, 5]


def test_cancel_queued_at_once_and_twice_is_409(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    job = submit_script(c, token, SCRIPT).json()
    r = c.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth(token))
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["ended_at"]
    again = c.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth(token))
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_ended"


def test_inspect_reads_without_storing(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    r = c.post("/api/v1/scripts/inspect", files={"file": ("t.py", SCRIPT.encode())}, headers=auth(token))
    assert r.status_code == 200
    assert r.json()["request"]["device_groups"][0]["ranks"] == 2 and r.json()["warnings"] == []
    bad = c.post("/api/v1/scripts/inspect", files={"file": ("t.py", b"def (")}, headers=auth(token))
    assert bad.status_code == 422 and "line 1" in bad.json()["error"]["message"]
    assert stored_nothing(scheduler_env)


def test_pending_reason_when_a_fitting_worker_exists(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "gpu-box", [gpu_group(2), cpu_group()])
    w.register()
    job = submit_script(c, token, SCRIPT).json()
    assert job["pending_reason"] == "waiting for the dispatcher"
    held = submit_script(c, token, SCRIPT, request={"device_groups": [{"ranks": 4, "device_type": "cuda"}]}).json()
    assert held["pending_reason"] == "held: no registered worker offers 4 cuda ranks"
    assert held["state"] == "queued"  # accepted and held: a donor with 4 GPUs may join later


def test_openapi_documents_routes(scheduler_env):
    spec = scheduler_env.client.get("/openapi.json").json()
    assert "/api/v1/jobs" in spec["paths"] and "/api/v1/attempts/{job_id}/{attempt}/start" in spec["paths"]
    post = spec["paths"]["/api/v1/jobs"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"] and "Every problem" in post["description"]
    assert "queue_position``, an estimate" in spec["paths"]["/api/v1/jobs"]["get"]["description"]


@pytest.mark.parametrize("entry", [None, "train.py"])
def test_zip_without_entrypoint_is_422(scheduler_env, entry):
    c = scheduler_env.client
    token = create_user(c, "alice")
    data = {"entrypoint": entry} if entry else {}
    r = c.post("/api/v1/jobs", files={"file": ("b.zip", make_zip({"x.py": "1"}))}, data=data, headers=auth(token))
    assert r.status_code == 422 and "has no 'train.py'" in r.json()["error"]["message"]
    assert stored_nothing(scheduler_env)


# ---------------------------------------------------------------- queue positions (one query per page)

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def _insert_jobs(env, rows: list[tuple[str, str, str, int]]) -> None:
    """(job id, user id, state, seconds after T0) rows, written straight to the table."""
    with env.rt.db.session() as s:
        for jid, uid, state, sec in rows:
            at = T0 + dt.timedelta(seconds=sec)
            s.add(JobModel(
                id=jid, user_id=uid, name=jid, state=state, entrypoint="train.py",
                request={"device_groups": [{"name": "default", "ranks": 1, "device_type": "any"}]}, warnings=[],
                bundle_key=f"users/{uid}/jobs/{jid}/bundle.zip", bundle_size=1, attempt=0 if state == "queued" else 1,
                created_at=at, queued_at=at, updated_at=at,
            ))
        s.commit()


@pytest.fixture()
def four_queues(scheduler_env):
    """alice 4 queued, bob 2, carol 1, dave 1, plus jobs in other states that must not count.

    Timeline (seconds after T0): a0 running @-1, b0 succeeded @-2, a1 @0, b1 @1, a2 and a3 both @2 (same
    instant: the job id decides, a2 first), b3 assigned @3, c1 and d1 both @4 (a tie between users: the lower
    user id takes its turn first), b2 @5, c2 cancelled @5, a4 @6. Returns (tokens, tie) with ``tie`` the
    jobs c1 and d1 in turn order.
    """
    c = scheduler_env.client
    tokens = {name: create_user(c, name) for name in ("alice", "bob", "carol", "dave")}
    uid = {name: c.get("/api/v1/users/me", headers=auth(t)).json()["id"] for name, t in tokens.items()}
    a, b, cc, d = uid["alice"], uid["bob"], uid["carol"], uid["dave"]
    _insert_jobs(scheduler_env, [
        ("q-a0", a, "running", -1), ("q-b0", b, "succeeded", -2),
        ("q-a1", a, "queued", 0), ("q-b1", b, "queued", 1),
        ("q-a3", a, "queued", 2), ("q-a2", a, "queued", 2),  # inserted out of order on purpose
        ("q-b3", b, "assigned", 3), ("q-c1", cc, "queued", 4), ("q-d1", d, "queued", 4),
        ("q-b2", b, "queued", 5), ("q-c2", cc, "cancelled", 5), ("q-a4", a, "queued", 6),
    ])
    tie = ["q-c1", "q-d1"] if cc < d else ["q-d1", "q-c1"]
    return tokens, tie


def _positions(c, tokens) -> dict[str, int | None]:
    out = {}
    for token in tokens.values():
        for job in c.get("/api/v1/jobs?limit=100", headers=auth(token)).json()["items"]:
            out[job["id"]] = job["queue_position"]
    return out


def test_queue_positions_of_several_users_on_a_page(scheduler_env, four_queues):
    c, (tokens, (third, fourth)) = scheduler_env.client, four_queues
    # Users take turns by their oldest queued job: alice (@0), bob (@1), then carol and dave (@4, by user id).
    # Round 1: a1 b1 c1 d1; round 2: a2 b2 (carol and dave are empty); round 3: a3; round 4: a4.
    assert _positions(c, tokens) == {
        "q-a1": 1, "q-b1": 2, third: 3, fourth: 4, "q-a2": 5, "q-b2": 6, "q-a3": 7, "q-a4": 8,
        "q-a0": None, "q-b0": None, "q-b3": None, "q-c2": None,
    }
    # a page in the middle of alice's list (newest first: a4, a3, a2, a1, a0) still counts the jobs before it
    page = c.get("/api/v1/jobs?limit=2&offset=1", headers=auth(tokens["alice"])).json()["items"]
    assert [(j["id"], j["queue_position"]) for j in page] == [("q-a3", 7), ("q-a2", 5)]
    dave = c.get("/api/v1/jobs/q-d1", headers=auth(tokens["dave"])).json()
    assert dave["queue_position"] == (3 if third == "q-d1" else 4)

    # alice's oldest queued job goes: her turn now comes after bob's (his oldest, @1, is older than a2 @2)
    assert c.post("/api/v1/jobs/q-a1/cancel", headers=auth(tokens["alice"])).status_code == 200
    # Round 1: b1 a2 c1 d1; round 2: b2 a3; round 3: a4.
    assert {k: v for k, v in _positions(c, tokens).items() if v is not None} == {
        "q-b1": 1, "q-a2": 2, third: 3, fourth: 4, "q-b2": 5, "q-a3": 6, "q-a4": 7,
    }


def test_queue_estimates_take_a_fixed_number_of_queries_whatever_the_page_size(scheduler_env, four_queues):
    from scheduler.services import queue as queue_service

    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    engine = scheduler_env.rt.db.engine
    with scheduler_env.rt.db.session() as s:
        everyone = list(s.scalars(sa.select(JobModel)))
        one = [j for j in everyone if j.id == "q-b2"]
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            small = {k: e.position for k, e in queue_service.estimates(s, one).items()}
            n_small = len(statements)
            statements.clear()
            full = {k: e.position for k, e in queue_service.estimates(s, everyone).items()}
            n_full = len(statements)
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
    assert small == {"q-b2": 6}
    assert len(full) == 8 and full["q-a4"] == 8
    # queued jobs, live workers, their running jobs, recent durations
    assert (n_small, n_full) == (4, 4), statements


def test_a_submission_costs_three_statements_in_one_transaction_and_answers_what_a_get_shows(scheduler_env):
    """Issue 14: a submission used to cost ten round trips (reads, a rollback, the insert, a reload of the job and
    its attempts, two queries for its position); now the worker shapes and the insert go in one transaction, and
    the answer is built from what was inserted plus the queue estimate's fixed reads (issue 18), no reload."""
    c, engine = scheduler_env.client, scheduler_env.rt.db.engine
    alice, bob = create_user(c, "alice"), create_user(c, "bob")
    for tok in (bob, alice, bob):  # queues of two users, and both tokens known to the auth cache
        assert submit_script(c, tok, SCRIPT).status_code == 201
    statements: list[str] = []
    commits: list[object] = []

    def on_statement(conn, cursor, statement, *args):
        statements.append(statement.split()[0].upper())

    def on_commit(conn):
        commits.append(conn)
        statements.append("COMMIT")

    sa.event.listen(engine, "before_cursor_execute", on_statement)
    sa.event.listen(engine, "commit", on_commit)
    try:
        r = submit_script(c, alice, SCRIPT, name="counted")
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_statement)
        sa.event.remove(engine, "commit", on_commit)
    assert r.status_code == 201, r.text
    assert statements[:3] == ["SELECT", "INSERT", "COMMIT"] and len(commits) == 1, statements
    assert set(statements[3:]) <= {"SELECT"} and len(statements[3:]) <= 4, statements  # the estimate's reads
    shown = c.get(f"/api/v1/jobs/{r.json()['id']}", headers=auth(alice)).json()
    assert r.json() == shown
    assert shown["attempts"] == [] and shown["name"] == "counted"
