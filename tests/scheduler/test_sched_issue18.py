"""Issue 18 through the API: run again (env, args, resubmit), failure first, logs as entries, metrics as CSV,
checkpoint folders as one streamed zip (local storage and S3), the queue (held, competitors, expected start),
phases and worker names."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zipfile

import pytest

from scheduler.db import JobModel
from scheduler.services import dispatch
from scheduler.storage import S3Storage
from scheduler.testing import InProcessWorker, auth, create_user, create_worker_token, submit_script
from scheduler.testing.factories import CPU_JOB, cpu_group, gpu_group, start_cpu_job
from scheduler.testing.fixtures import s3_overrides_for
from tests.scheduler.test_sched_logs_artifacts import parse_sse

API = "/api/v1"


@pytest.fixture()
def scheduler_overrides(request):
    return s3_overrides_for(request)


def _run_on(env, w: InProcessWorker, jid: str, attempt: int = 1) -> dict:
    dispatch.dispatch_round(env.rt.db, env.rt.redis)
    r = w.start(jid, attempt)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- run again: env, args, resubmit


def test_env_and_args_are_stored_with_the_job_and_given_to_its_worker(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    r = submit_script(c, user, CPU_JOB, env=json.dumps({"LR": "1e-3", "NAME": "a b"}), args=json.dumps(["--x", "1"]))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["env"] == {"LR": "1e-3", "NAME": "a b"} and job["args"] == ["--x", "1"]
    started = _run_on(scheduler_env, w, job["id"])
    assert started["user_env"] == {"LR": "1e-3", "NAME": "a b"} and started["args"] == ["--x", "1"]


@pytest.mark.parametrize(
    ("env", "args", "field", "rule"),
    [
        ({"TWINKLE_OUTPUT_DIR": "/etc"}, None, "env.TWINKLE_OUTPUT_DIR", "set by the platform"),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, None, "env.CUDA_VISIBLE_DEVICES", "set by the platform"),
        ({"1BAD": "x"}, None, "env.1BAD", "not a variable name"),
        ({"A": "x\x00y"}, None, "env.A", "NUL"),
        ({f"V{i}": "x" for i in range(65)}, None, "env", "at most 64"),
        ({"A": "x" * 4097}, None, "env.A", "at most 4096"),
        (None, ["ok", 3], "args.1", "must be a string"),
        (None, {"not": "a list"}, "args", "list of strings"),
    ],
)
def test_bad_env_or_args_are_refused_naming_the_rule_and_nothing_is_stored(scheduler_env, env, args, field, rule):
    c = scheduler_env.client
    user = create_user(c, "alice")
    form = {k: json.dumps(v) for k, v in (("env", env), ("args", args)) if v is not None}
    r = submit_script(c, user, CPU_JOB, **form)
    assert r.status_code == 422, r.text
    assert rule in r.json()["error"]["fields"][field]
    with scheduler_env.rt.db.session() as s:
        assert s.query(JobModel).count() == 0


def test_resubmit_copies_the_bundle_keeps_what_is_left_out_and_overrides_the_rest(scheduler_env):
    c, env = scheduler_env.client, scheduler_env
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group(ranks=2)])
    w.register()
    first = submit_script(c, user, CPU_JOB, name="sft", env=json.dumps({"LR": "1e-3"}), args=json.dumps(["-v"])).json()
    _run_on(env, w, first["id"])
    w.finish(first["id"], 1, "failed", 1, "exit code 1")

    same = c.post(f"{API}/jobs/{first['id']}/resubmit", json={}, headers=auth(user))
    assert same.status_code == 201, same.text
    same = same.json()
    assert same["id"] != first["id"] and same["resubmitted_from"] == first["id"] and same["state"] == "queued"
    assert (same["name"], same["env"], same["args"], same["request"]) == ("sft", {"LR": "1e-3"}, ["-v"],
                                                                           first["request"])
    edited = c.post(f"{API}/jobs/{first['id']}/resubmit", headers=auth(user), json={
        "name": "sft longer", "env": {"LR": "5e-4", "MAX_STEPS": "100"}, "args": [],
        "request": {"device_groups": [{"name": "default", "ranks": 2, "device_type": "cpu"}]},
    }).json()
    assert edited["name"] == "sft longer" and edited["env"] == {"LR": "5e-4", "MAX_STEPS": "100"}
    assert edited["args"] == [] and edited["request"]["device_groups"][0]["ranks"] == 2
    assert edited["request"]["launcher"] == "torchrun"  # two ranks in local mode now: launched with torchrun
    # the worker gets the original's bundle
    _run_on(env, w, same["id"])
    bundle = w.bundle(same["id"], 1)
    assert bundle.status_code == 200 and zipfile.ZipFile(io.BytesIO(bundle.content)).read("train.py") == CPU_JOB.encode()


def test_resubmit_refuses_reserved_variables_and_another_users_job(scheduler_env):
    c = scheduler_env.client
    alice, bob = create_user(c, "alice"), create_user(c, "bob")
    jid = submit_script(c, alice, CPU_JOB).json()["id"]
    r = c.post(f"{API}/jobs/{jid}/resubmit", json={"env": {"TWINKLE_JOB_ID": "x"}}, headers=auth(alice))
    assert r.status_code == 422 and "set by the platform" in r.json()["error"]["fields"]["env.TWINKLE_JOB_ID"]
    r = c.post(f"{API}/jobs/{jid}/resubmit", json={}, headers=auth(bob))
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = c.post(f"{API}/jobs/{jid}/resubmit", json={"request": {"device_groups": []}}, headers=auth(alice))
    assert r.status_code == 422


# ---------------------------------------------------------------- failure first, one end line, worker names


def test_a_failed_job_carries_its_reason_and_stderr_tail_and_the_log_says_it_once(scheduler_env):
    env = scheduler_env
    c, user, w, jid = start_cpu_job(env)
    w.logs(jid, 1, "step 1 loss 2.0")
    w.logs(jid, 1, *[f"trace {i}" for i in range(25)], "ValueError: bad shape", stream="stderr")
    assert w.finish(jid, 1, "failed", 1, "exit code 1\nValueError: bad shape").status_code == 200
    job = c.get(f"{API}/jobs/{jid}", headers=auth(user)).json()
    assert job["phase"] == "failed" and job["worker_name"] == "box" and job["attempts"][0]["worker_name"] == "box"
    failure = job["failure"]
    assert (failure["attempt"], failure["kind"], failure["summary"], failure["exit_code"]) == (
        1, "exit_code", "exit code 1", 1)
    # the tail is read from the log's stderr lines, not from what the worker chose to put in `error`
    assert failure["stderr_tail"] == [f"trace {i}" for i in range(6, 25)] + ["ValueError: bad shape"]
    text = c.get(f"{API}/jobs/{jid}/logs", headers=auth(user)).text
    assert text.count("attempt 1 failed") == 1 and "attempt 1 failed: exit code 1" in text
    assert "attempt 1 started on worker box" in text and w.worker_id not in text


@pytest.mark.parametrize(
    ("exit_code", "limit", "kind", "summary", "signal"),
    [
        (-9, None, "signal", "killed by signal SIGKILL", "SIGKILL"),
        (-9, "memory limit 8 GiB reached", "limit", "memory limit 8 GiB reached", "SIGKILL"),
        (None, None, "error", "could not fetch the bundle: 404", None),
    ],
)
def test_failure_kinds(scheduler_env, exit_code, limit, kind, summary, signal):
    c, user, w, jid = start_cpu_job(scheduler_env)
    w.finish(jid, 1, "failed", exit_code, "could not fetch the bundle: 404" if exit_code is None else None, limit)
    failure = c.get(f"{API}/jobs/{jid}", headers=auth(user)).json()["failure"]
    assert (failure["kind"], failure["summary"], failure["signal"], failure["limit"]) == (kind, summary, signal, limit)
    assert f"attempt 1 failed: {summary}" in c.get(f"{API}/jobs/{jid}/logs", headers=auth(user)).text


def test_cancel_of_a_running_job_shows_stopping_until_the_worker_ends_it(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    assert c.get(f"{API}/jobs/{jid}", headers=auth(user)).json()["phase"] == "running"
    r = c.post(f"{API}/jobs/{jid}/cancel", headers=auth(user)).json()
    assert (r["state"], r["phase"]) == ("cancelling", "stopping")
    w.finish(jid, 1, "failed", -15)
    job = c.get(f"{API}/jobs/{jid}", headers=auth(user)).json()
    assert (job["state"], job["phase"], job["failure"]) == ("cancelled", "cancelled", None)


# ---------------------------------------------------------------- logs as entries


def test_logs_as_entries_with_stream_and_time_json_sse_and_timestamps(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    t0 = 1_800_000_000.25
    w.client.post(f"{API}/attempts/{jid}/1/logs", headers=auth(w.token), json={"lines": [
        {"ts": t0, "stream": "stdout", "text": "hello"}, {"ts": t0 + 1, "stream": "stderr", "text": "oops"}]})
    live = c.get(f"{API}/jobs/{jid}/logs?format=json", headers=auth(user)).json()["lines"]
    assert [(e["stream"], e["text"], e["ts"]) for e in live[1:]] == [("stdout", "hello", t0), ("stderr", "oops", t0 + 1)]
    assert live[0]["stream"] == "system" and all(e["attempt"] == 1 and e["id"] for e in live)
    w.finish(jid, 1)
    scheduler_env.rt.redis.flushdb()  # persisted entries come back from storage, with their times and streams
    stored = c.get(f"{API}/jobs/{jid}/logs?format=json", headers=auth(user)).json()["lines"]
    assert [(e["stream"], e["text"], e["ts"]) for e in stored[1:3]] == [
        ("stdout", "hello", t0), ("stderr", "oops", t0 + 1)]
    stamped = c.get(f"{API}/jobs/{jid}/logs?timestamps=true", headers=auth(user)).text.splitlines()
    assert "2027-01-15T08:00:00.250Z hello" in stamped
    events = parse_sse(c.get(f"{API}/jobs/{jid}/logs/stream?format=json", headers=auth(user)).text)
    entries = [json.loads(e["data"]) for e in events if e["event"] == "message"]
    assert {"stream": "stderr", "text": "oops"}.items() <= entries[2].items()
    assert c.get(f"{API}/jobs/{jid}/logs?format=xml", headers=auth(user)).status_code == 422


# ---------------------------------------------------------------- metrics export


def test_metrics_export_as_csv_with_every_metric_a_column_and_formulas_defused(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    w.metrics(jid, 1, [
        {"step": 1, "ts": 10.0, "metrics": {"loss": 2.5, "lr": 0.001}},
        {"step": 2, "ts": 11.0, "metrics": {"loss": -1.5, "note": "=HYPERLINK(\"http://evil\")"}},
        {"step": 2, "ts": 12.0, "metrics": {"sys/cpu_percent": 97.5}},
    ])
    r = c.get(f"{API}/jobs/{jid}/metrics?format=csv", headers=auth(user))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f'filename="{jid}-metrics.csv"' in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["attempt", "step", "ts", "loss", "lr", "note", "sys/cpu_percent"]
    assert rows[1] == ["1", "1", "10.0", "2.5", "0.001", "", ""]
    assert rows[2] == ["1", "2", "11.0", "-1.5", "", "'=HYPERLINK(\"http://evil\")", ""]
    assert rows[3][-1] == "97.5"
    assert len(c.get(f"{API}/jobs/{jid}/metrics?format=json", headers=auth(user)).json()["records"]) == 3


def test_metrics_series_keep_the_scripts_records_or_the_workers_system_samples_apart(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    w.metrics(jid, 1, [
        {"step": 1, "ts": 10.0, "metrics": {"loss": 2.5}},
        {"step": 1, "ts": 10.5, "metrics": {"sys/cpu_percent": 97.5, "sys/rss_bytes": 1e9}},
        {"step": 2, "ts": 11.0, "metrics": {"loss": 1.5, "sys/own_note": 1.0}},  # the script's: it has a loss
    ])

    def keys(series: str) -> list[list[str]]:
        r = c.get(f"{API}/jobs/{jid}/metrics", params={"series": series}, headers=auth(user))
        assert r.status_code == 200, r.text
        return [sorted(rec["metrics"]) for rec in r.json()["records"]]

    assert keys("training") == [["loss"], ["loss", "sys/own_note"]]
    assert keys("system") == [["sys/cpu_percent", "sys/rss_bytes"]]
    assert len(keys("all")) == 3
    csv_rows = c.get(f"{API}/jobs/{jid}/metrics?format=csv&series=system", headers=auth(user)).text.splitlines()
    assert csv_rows[0] == "attempt,step,ts,sys/cpu_percent,sys/rss_bytes" and len(csv_rows) == 2
    assert c.get(f"{API}/jobs/{jid}/metrics?series=gpu", headers=auth(user)).status_code == 422


# ---------------------------------------------------------------- checkpoint folder as one zip


def _zip_of(c, user, jid, query="") -> zipfile.ZipFile:
    r = c.get(f"{API}/jobs/{jid}/artifacts/zip{query}", headers=auth(user))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(r.content))


def _download_a_checkpoint_folder_as_one_zip(env):
    c, user, w, jid = start_cpu_job(env)
    big = bytes(range(256)) * 8192  # 2 MiB: several storage chunks
    for path, data in [("output/last-checkpoint/adapter.safetensors", big), ("output/last-checkpoint/cfg.json", b"{}"),
                       ("output/checkpoint-2/adapter.safetensors", b"old"), ("tensorboard/events.out.tfevents.1.j", b"e")]:
        assert w.artifact(jid, 1, path, data).status_code == 201
    w.finish(jid, 1)
    zf = _zip_of(c, user, jid, "?folder=output/last-checkpoint")
    assert sorted(zf.namelist()) == ["last-checkpoint/adapter.safetensors", "last-checkpoint/cfg.json"]
    assert zf.read("last-checkpoint/adapter.safetensors") == big and zf.testzip() is None
    r = c.get(f"{API}/jobs/{jid}/artifacts/zip?folder=output/last-checkpoint", headers=auth(user))
    assert f'filename="{jid}-last-checkpoint.zip"' in r.headers["content-disposition"]
    everything = _zip_of(c, user, jid)
    assert "output/checkpoint-2/adapter.safetensors" in everything.namelist()
    assert "tensorboard/events.out.tfevents.1.j" in everything.namelist()
    missing = c.get(f"{API}/jobs/{jid}/artifacts/zip?folder=output/nope", headers=auth(user))
    assert missing.status_code == 404 and "output/last-checkpoint" in missing.json()["error"]["message"]
    climb = c.get(f"{API}/jobs/{jid}/artifacts/zip?folder=output/../../x", headers=auth(user))
    assert climb.status_code == 422 and climb.json()["error"]["code"] == "bad_path"
    other = create_user(c, "mallory")
    assert c.get(f"{API}/jobs/{jid}/artifacts/zip", headers=auth(other)).status_code == 404


def test_a_checkpoint_folder_downloads_as_one_zip_from_local_storage(scheduler_env):
    _download_a_checkpoint_folder_as_one_zip(scheduler_env)


def test_a_checkpoint_folder_downloads_as_one_zip_from_s3(scheduler_env):
    assert isinstance(scheduler_env.rt.storage, S3Storage)
    _download_a_checkpoint_folder_as_one_zip(scheduler_env)


# ---------------------------------------------------------------- the queue


def test_a_shared_queue_snapshot_serves_estimates_without_reading_the_queue_and_places_new_jobs_last(
    scheduler_env,
):
    """``QUEUE_ESTIMATE_TTL_S``: one read of the queue serves the requests that follow; a job queued since is
    placed where a fresh read would place it (last among its user's), with no statement run."""
    import sqlalchemy as sa

    from scheduler.services.queue import estimates

    env, c = scheduler_env, scheduler_env.client
    alice, bob = create_user(c, "alice"), create_user(c, "bob")
    InProcessWorker(c, create_worker_token(c), "cpu-box", [cpu_group()]).register()  # else they are held
    first = [submit_script(c, u, CPU_JOB).json()["id"] for u in (alice, alice, bob)]
    statements: list[str] = []
    sa.event.listen(env.rt.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with env.rt.db.session() as s:
        jobs = [s.get(JobModel, j) for j in first]
        fresh = estimates(s, jobs, 0.0)
        assert [fresh[j].position for j in first] == [1, 3, 2]
        assert estimates(s, jobs, 60.0) == fresh  # the snapshot is taken here
    newer = submit_script(c, alice, CPU_JOB).json()["id"]
    with env.rt.db.session() as s:
        job = s.get(JobModel, newer)
        statements.clear()
        cached = estimates(s, [job], 60.0)
        assert statements == [], "a warm snapshot answers without reading the queue"
        assert cached[newer].position == estimates(s, [job], 0.0)[newer].position == 4


def test_a_stale_queue_snapshot_is_taken_again_by_one_request_while_the_others_answer_from_the_old_one(
    scheduler_env,
):
    """Under load many requests find the snapshot expired at the same moment; only the first reads the queue
    again, the rest answer from the old snapshot meanwhile, without a statement of their own."""
    import threading

    import sqlalchemy as sa

    from scheduler.services import queue

    env, c = scheduler_env, scheduler_env.client
    alice = create_user(c, "alice")
    InProcessWorker(c, create_worker_token(c), "cpu-box", [cpu_group()]).register()
    job_id = submit_script(c, alice, CPU_JOB).json()["id"]
    with env.rt.db.session() as s:
        old = queue._snapshot(s, 60.0)
    old.taken -= 120  # expired
    reading, release = threading.Event(), threading.Event()
    real_init = queue._Snapshot.__init__

    def slow_init(self, session):
        reading.set()
        assert release.wait(10)
        real_init(self, session)

    statements: list[str] = []
    got: list[object] = []
    try:
        queue._Snapshot.__init__ = slow_init  # type: ignore[method-assign]

        def first() -> None:
            with env.rt.db.session() as s:
                got.append(queue._snapshot(s, 60.0))

        t = threading.Thread(target=first)
        t.start()
        assert reading.wait(10)
        sa.event.listen(env.rt.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        with env.rt.db.session() as s:
            during = queue._snapshot(s, 60.0)
            job = s.get(JobModel, job_id)
            statements.clear()
            assert queue.estimates(s, [job], 60.0)[job_id].position == 1
        assert during is old and statements == [], "while one request reads the queue, the others use the old one"
        release.set()
        t.join(10)
    finally:
        release.set()
        queue._Snapshot.__init__ = real_init  # type: ignore[method-assign]
    assert got and got[0] is not old
    with env.rt.db.session() as s:
        assert queue._snapshot(s, 60.0) is got[0], "the new snapshot replaces the old one"


def test_held_jobs_have_no_place_and_only_competitors_count(scheduler_env):
    c = scheduler_env.client
    alice, bob = create_user(c, "alice"), create_user(c, "bob")
    gpu = InProcessWorker(c, create_worker_token(c), "gpu-box", [gpu_group(ranks=1)])
    gpu.register()
    cpu = InProcessWorker(c, create_worker_token(c), "cpu-box", [cpu_group()])
    cpu.register()
    gpu_job = "from twinkle import DeviceGroup\nDeviceGroup(name='default', ranks=1, device_type='cuda')\n"
    held_job = "from twinkle import DeviceGroup\nDeviceGroup(name='default', ranks=8, device_type='cuda')\n"
    g1 = submit_script(c, alice, gpu_job).json()
    h1 = submit_script(c, bob, held_job).json()
    c1 = submit_script(c, bob, CPU_JOB).json()
    g2 = submit_script(c, bob, gpu_job).json()
    assert (h1["phase"], h1["queue_position"], h1["expected_start_at"]) == ("held", None, None)
    # the CPU job competes with nobody: first, though three jobs were submitted before it
    assert (c1["phase"], c1["queue_position"]) == ("queued", 1)
    # g2 waits behind g1 only (the held job and the CPU job cannot take the GPU slot)
    assert (g1["queue_position"], g2["queue_position"]) == (1, 2)
    listed = {j["id"]: j["queue_position"] for j in c.get(f"{API}/jobs", headers=auth(bob)).json()["items"]}
    assert listed == {h1["id"]: None, c1["id"]: 1, g2["id"]: 2}


def test_expected_start_from_recent_durations_and_the_queue_ahead(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    # no finished job yet: no estimate
    first = submit_script(c, user, CPU_JOB).json()
    assert first["expected_start_at"] is None
    _run_on(env, w, first["id"])
    w.finish(first["id"], 1)
    with env.rt.db.session() as s:  # it ran 10 minutes
        job = s.get(JobModel, first["id"])
        job.ended_at = job.started_at + dt.timedelta(minutes=10)
        s.commit()
    running = submit_script(c, user, CPU_JOB).json()
    _run_on(env, w, running["id"])  # just started: ~10 minutes left on the only slot
    a = submit_script(c, user, CPU_JOB).json()
    b = submit_script(c, user, CPU_JOB).json()
    now = dt.datetime.now(dt.UTC)

    def eta_min(job):
        at = c.get(f"{API}/jobs/{job['id']}", headers=auth(user)).json()["expected_start_at"]
        return (dt.datetime.fromisoformat(at) - now).total_seconds() / 60

    assert 9 <= eta_min(a) <= 10.5  # when the running job ends
    assert 19 <= eta_min(b) <= 20.5  # after a, which takes the mean duration too


# ---------------------------------------------------------------- the example submits without warnings


def test_the_example_script_submits_with_no_warnings(scheduler_env):
    from pathlib import Path

    c = scheduler_env.client
    user = create_user(c, "alice")
    source = (Path(__file__).resolve().parents[2] / "examples" / "self_cognition.py").read_text()
    job = submit_script(c, user, source, filename="self_cognition.py").json()
    assert job["warnings"] == []
    # WORLD_SIZE defaults to 1 outside Ray; the device is CUDA when there is one, else the CPU: any will do
    assert job["request"]["device_groups"] == [{"name": "default", "ranks": 1, "device_type": "any",
                                                 "min_memory_gb": 0.0}]


@pytest.mark.parametrize(
    ("prelude", "call", "group", "warned"),
    [
        ('N = int(os.environ.get("N", "4"))', "DeviceGroup('g', ranks=N, device_type='cuda')", (4, "cuda"), False),
        ('M = os.getenv("M", "ray")\nN = 8 if M == "ray" else 2', "DeviceGroup('g', N, 'cpu')", (8, "cpu"), False),
        ('D = "cuda" if torch.cuda.is_available() else "cpu"', "DeviceGroup('g', 1, D)", (1, "any"), False),
        ('D = "cuda" if x else "tpu-v9"', "DeviceGroup('g', 1, D)", (1, "any"), True),  # an unknown type: say so
        ("N = 2\nN = 16", "DeviceGroup('g', N, 'cuda')", (1, "cuda"), True),  # bound twice: not folded
        ("N = compute()", "DeviceGroup('g', N, 'cuda')", (1, "cuda"), True),
    ],
)
def test_device_groups_read_module_constants_folded_statically(prelude, call, group, warned):
    from scheduler.services.script_inspection import inspect_source

    found = inspect_source(f"import os, torch\n{prelude}\n{call}\n")
    g = found.device_groups[0]
    assert (g["ranks"], g["device_type"]) == group
    assert bool(found.warnings) == warned, found.warnings
