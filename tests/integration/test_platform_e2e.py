"""End to end: real API, dispatcher, ``twinkle-worker`` daemons, Redis, moto_server (S3), SQLite/PostgreSQL.

Scripts are trivial except in the one test that runs ``examples/self_cognition.py``. Tests that must see
what a job did write marker files to absolute paths under the test's tmp folder (the job's sandbox is an
environment and a process group, not a filesystem jail).
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import boto3
import httpx
import pytest

from contract.attempts import CHECKPOINT_MARKER
from tests.integration.conftest import ROOT, Stack, run_submit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def s3_keys(stack: Stack, prefix: str = "") -> dict[str, bytes]:
    """Objects in the bucket (or, with TWINKLE_E2E_STORAGE=local, in the local storage folder) under ``prefix``."""
    if os.environ.get("TWINKLE_E2E_STORAGE") == "local":
        root = stack.tmp / "storage"
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix().startswith(prefix)
        }
    s3 = stack.s3
    client = boto3.client(
        "s3", endpoint_url=s3["endpoint_url"], aws_access_key_id=s3["access_key_id"],
        aws_secret_access_key=s3["secret_access_key"], region_name=s3["region"],
    )
    keys = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = client.get_object(Bucket=s3["bucket"], Key=obj["Key"])["Body"].read()
    return keys


def worker_ids(stack: Stack, token: str) -> dict[str, str]:
    with stack.http(token) as c:
        items = c.get("/workers").json()["items"]
    return {w["name"]: w["id"] for w in items}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout: float, what: str, stack: Stack | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{stack.diagnostics()}" if stack else ""))


TRAIN_SCRIPT = """
import json, os, sys, time

print("hello from the job", flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
env = dict(os.environ)
print("ENV " + json.dumps(env), flush=True)
with open(os.environ["TWINKLE_METRICS_FILE"], "a") as f:
    for step in (1, 2, 3):
        f.write(json.dumps({"step": step, "ts": time.time(), "metrics": {"loss": 2.0 / step}}) + "\\n")
out = os.environ["TWINKLE_OUTPUT_DIR"]
tmp = os.path.join(out, ".checkpoint-3.tmp-x")
os.makedirs(tmp)
with open(os.path.join(tmp, "adapter_model.safetensors"), "wb") as f:
    f.write(b"fake-weights-" + os.environ["TWINKLE_JOB_ID"].encode())
with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
    json.dump({"r": 8}, f)
os.rename(tmp, os.path.join(out, "checkpoint-3"))
from helper import message
print(message, flush=True)
"""


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_submit_run_follow_download(stack: Stack, tmp_path: Path):
    worker = stack.start_worker("cpu-1")
    token = stack.create_user("alice")
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN_SCRIPT)
    (project / "helper.py").write_text("message = 'imported from the bundle'\n")
    (project / "output").mkdir()
    (project / "output" / "stale.bin").write_text("must not be uploaded")

    # submit and follow the logs with the CLI
    result = run_submit(stack, [str(project / "train.py"), "--follow", "--name", "e2e"], token)
    assert result.returncode == 0, result.stdout + result.stderr + stack.diagnostics()
    assert "submitted job" in result.stdout
    job_id = result.stdout.split("submitted job", 1)[1].split()[0]
    assert "hello from the job" in result.stdout and "imported from the bundle" in result.stdout
    assert "a warning on stderr" in result.stdout and "succeeded" in result.stderr

    # the job's environment held the job contract and none of the worker's secrets
    env_line = next(line for line in result.stdout.splitlines() if line.startswith("ENV "))
    env = json.loads(env_line[4:])
    assert env["TWINKLE_JOB_ID"] == job_id and env["TWINKLE_ATTEMPT"] == "1"
    dumped = json.dumps(env)
    assert stack.worker_token() not in dumped
    assert not any(v == stack.s3["secret_access_key"] for v in env.values())
    assert stack.redis_url not in dumped and stack.admin_token not in dumped
    assert not any(k.startswith(("TWINKLE_WORKER_", "TWINKLE_SCHEDULER_", "AWS_")) for k in env)

    # the checkpoint is in the bucket under the pinned layout
    job = stack.job(token, job_id)
    assert job["state"] == "succeeded" and len(job["attempts"]) == 1
    prefix = f"users/{job['user_id']}/jobs/{job_id}/attempts/1/"
    keys = s3_keys(stack, prefix)
    assert keys[prefix + "output/checkpoint-3/adapter_model.safetensors"] == f"fake-weights-{job_id}".encode()
    assert prefix + "output/checkpoint-3/adapter_config.json" in keys
    assert not any("tmp" in k or "stale.bin" in k for k in keys)

    # metrics arrived
    with stack.http(token) as c:
        records = c.get(f"/jobs/{job_id}/metrics").json()["records"]
    records = [r for r in records if not any(k.startswith("sys/") for k in r["metrics"])]  # the worker's samples
    assert [r["step"] for r in records] == [1, 2, 3] and records[0]["metrics"]["loss"] == 2.0

    # download through the presigned links
    dest = tmp_path / "download"
    result = run_submit(stack, ["download", job_id, "--dest", str(dest)], token)
    assert result.returncode == 0, result.stderr
    assert (dest / "output/checkpoint-3/adapter_model.safetensors").read_bytes() == f"fake-weights-{job_id}".encode()

    # the other read commands
    result = run_submit(stack, ["logs", job_id], token)
    assert result.returncode == 0 and "hello from the job" in result.stdout
    result = run_submit(stack, ["status", job_id], token)
    assert result.returncode == 0 and "succeeded" in result.stdout
    result = run_submit(stack, ["list"], token)
    assert result.returncode == 0 and job_id in result.stdout

    # another user sees none of it
    other = stack.create_user("mallory")
    result = run_submit(stack, ["status", job_id], other)
    assert result.returncode != 0

    # the daemon's health endpoint
    health = httpx.get(f"http://127.0.0.1:{worker.port}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_jobs_go_only_to_workers_whose_device_groups_fit(stack: Stack, tmp_path: Path):
    stack.start_worker("cpu-worker", device_type="cpu", ranks="1")
    # no GPU here: the fake GPU worker sends a probe file instead of measuring (fakes only for GPUs)
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"devices": [{"device_type": "cuda", "device_model": "fake", "memory_gb": 24.0}] * 2}))
    stack.start_worker("fake-gpu", device_type="cuda", ranks="2", memory_gb="24", probe_file=str(probe))
    token = stack.create_user()
    ids = worker_ids(stack, token)
    script = "print('ran')\n"
    cpu_jobs = [stack.submit(token, script, name=f"cpu-{i}",
                                 request={"device_groups": [{"name": "default", "ranks": 1, "device_type": "cpu"}]})
                for i in range(3)]
    gpu_jobs = [stack.submit(token, script, name=f"gpu-{i}",
                                 request={"device_groups": [{"name": "default", "ranks": 2, "device_type": "cuda",
                                                             "min_memory_gb": 16}]})
                for i in range(3)]
    too_big = stack.submit(token, script, name="too-big",
                               request={"device_groups": [{"name": "default", "ranks": 8, "device_type": "cuda"}]})
    for job, worker in [(j, "cpu-worker") for j in cpu_jobs] + [(j, "fake-gpu") for j in gpu_jobs]:
        done = stack.wait_job(token, job["id"])
        assert done["state"] == "succeeded", done
        assert [a["worker_id"] for a in done["attempts"]] == [ids[worker]], (job["name"], done["attempts"])
    waiting = stack.job(token, too_big["id"])
    assert waiting["state"] == "queued" and waiting["attempts"] == []
    assert waiting["pending_reason"]


# The three tests below watch their jobs through files in a host folder (pids, marks), a channel the sandbox
# closes on purpose; their workers are a trusted pool (isolation none), so their jobs opt out of the sandbox
# (allow_unsandboxed), as only such jobs go there. The sandboxed versions of cancel and "dies with its worker" are
# tests/worker/test_sandbox_attacks.py and test_sandbox_daemon.py.
NO_SANDBOX = {"isolation": "none", "trusted_pool": "1"}


def test_cancel_running_and_queued_jobs(stack: Stack, tmp_path: Path):
    stack.start_worker("solo", **NO_SANDBOX)
    token = stack.create_user()
    pid_file = tmp_path / "pid"
    running = stack.submit(
        token,
        textwrap.dedent(
            f"""
            import os, time
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            print("started", flush=True)
            time.sleep(120)
            """
        ),
        name="long",
        allow_unsandboxed=True,
    )
    stack.wait_job(token, running["id"], states={"running"}, timeout=30)
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 15, "the job's pid file"))
    queued = stack.submit(token, "print('never')\n", name="queued", allow_unsandboxed=True)
    assert stack.job(token, queued["id"])["state"] == "queued"

    result = run_submit(stack, ["cancel", queued["id"]], token)
    assert result.returncode == 0, result.stderr
    assert stack.wait_job(token, queued["id"], timeout=10)["state"] == "cancelled"

    t0 = time.monotonic()
    result = run_submit(stack, ["cancel", running["id"]], token)
    assert result.returncode == 0, result.stderr
    done = stack.wait_job(token, running["id"], timeout=20)
    assert done["state"] == "cancelled"
    wait_for(lambda: not pid_alive(pid), 10, "the cancelled job's process to exit")
    assert time.monotonic() - t0 < 15
    assert stack.job(token, queued["id"])["attempts"] == []  # the queued job never ran


def test_killed_worker_job_is_requeued_and_finishes_once(stack: Stack, tmp_path: Path):
    first = stack.start_worker("first", **NO_SANDBOX)
    token = stack.create_user()
    marks = tmp_path / "marks"
    marks.mkdir()
    job = stack.submit(
        token,
        textwrap.dedent(
            f"""
            import os, time
            n = os.environ["TWINKLE_ATTEMPT"]
            resume = os.environ.get("TWINKLE_RESUME_FROM")
            if resume:
                with open(os.path.join(resume, "state.txt")) as f:
                    open(os.path.join({str(marks)!r}, "resumed-" + n), "w").write(f.read())
            else:
                ckpt = os.path.join(os.environ["TWINKLE_OUTPUT_DIR"], "checkpoint-7")
                os.makedirs(ckpt + ".tmp")
                open(os.path.join(ckpt + ".tmp", "state.txt"), "w").write("step 7 of attempt " + n)
                os.rename(ckpt + ".tmp", ckpt)
            open(os.path.join({str(marks)!r}, "pid-" + n), "w").write(str(os.getpid()))
            print("attempt", n, "running", flush=True)
            time.sleep(4 if n != "1" else 120)
            with open(os.path.join({str(marks)!r}, "done"), "a") as f:
                f.write(n + "\\n")
            print("finished", flush=True)
            """
        ),
        name="survivor",
        allow_unsandboxed=True,
    )
    stack.wait_job(token, job["id"], states={"running"}, timeout=30)
    pid1 = int(wait_for(lambda: (marks / "pid-1").exists() and (marks / "pid-1").read_text(), 15, "attempt 1"))
    user_id = stack.job(token, job["id"])["user_id"]
    # the folder's completion marker goes up after its files: only then is it a resume point
    wait_for(lambda: [k for k in s3_keys(stack, f"users/{user_id}/jobs/{job['id']}/attempts/1/output/")
                      if k.endswith(CHECKPOINT_MARKER)], 15, "attempt 1's checkpoint upload", stack)
    stack.start_worker("second", **NO_SANDBOX)
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    wait_for(lambda: not pid_alive(pid1), 10, "the orphaned job to die with its worker")

    done = stack.wait_job(token, job["id"], timeout=60)
    assert done["state"] == "succeeded", done
    ids = worker_ids(stack, token)
    assert [a["n"] for a in done["attempts"]] == [1, 2]
    assert done["attempts"][0]["worker_id"] == ids["first"] and done["attempts"][0]["state"] != "succeeded"
    assert done["attempts"][1]["worker_id"] == ids["second"] and done["attempts"][1]["state"] == "succeeded"
    time.sleep(1)  # a duplicate delivery would have had time to run by now
    assert (marks / "done").read_text().split() == ["2"], "the job finished exactly once"
    # attempt 2 resumed from the checkpoint attempt 1 uploaded before its worker died
    assert (marks / "resumed-2").read_text() == "step 7 of attempt 1"


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_fifty_jobs_five_users_two_workers(stack: Stack, tmp_path: Path):
    stack.start_worker("w1", **NO_SANDBOX)
    stack.start_worker("w2", **NO_SANDBOX)
    marks = tmp_path / "marks"
    marks.mkdir()
    tokens = [stack.create_user(f"user{i}") for i in range(5)]
    script = textwrap.dedent(
        f"""
        import os
        with open(os.path.join({str(marks)!r}, os.environ["TWINKLE_JOB_ID"]), "a") as f:
            f.write(os.environ["TWINKLE_ATTEMPT"] + "\\n")
        print("ok")
        """
    )
    jobs = [(tokens[i % 5], stack.submit(tokens[i % 5], script, name=f"j{i}", allow_unsandboxed=True)) for i in range(50)]
    ids = worker_ids(stack, tokens[0])
    used = set()
    for token, job in jobs:
        done = stack.wait_job(token, job["id"], timeout=180)
        assert done["state"] == "succeeded", done
        assert len(done["attempts"]) == 1
        used.add(done["attempts"][0]["worker_id"])
        assert (marks / job["id"]).read_text() == "1\n", f"job {job['id']} ran more than once"
    assert sorted(p.name for p in marks.iterdir()) == sorted(j["id"] for _, j in jobs)
    assert used == {ids["w1"], ids["w2"]}
    # every user sees exactly their own ten
    for token in tokens:
        with stack.http(token) as c:
            assert c.get("/jobs", params={"limit": 100}).json()["total"] == 10


def test_bad_input_through_the_cli(stack: Stack, tmp_path: Path):
    token = stack.create_user()
    (tmp_path / "notes.txt").write_text("not python")
    result = run_submit(stack, [str(tmp_path / "notes.txt")], token)
    assert result.returncode == 2 and "not a Python script" in result.stderr

    big = tmp_path / "big"
    big.mkdir()
    (big / "train.py").write_text("print(1)\n")
    (big / "data.npy").write_bytes(os.urandom(6 * 1024 * 1024))
    result = run_submit(stack, [str(big / "train.py")], token, TWINKLE_MAX_BUNDLE_MB="2")
    assert result.returncode == 2 and "data.npy" in result.stderr and "limit" in result.stderr
    # over the server's limit (5 MB in these tests) though within the client's: the API's refusal is shown
    result = run_submit(stack, [str(big / "train.py"), "--max-bundle-mb", "100"], token)
    assert result.returncode != 0 and "error" in result.stderr.lower(), result.stdout + result.stderr

    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "train.py").write_text("print(1)\n")
    result = run_submit(stack, [str(ok / "train.py")], "twk_u_wrong")
    assert result.returncode == 1 and "refused the token" in result.stderr
    result = run_submit(stack, [str(ok / "train.py")], None)
    assert result.returncode == 1 and "no API token" in result.stderr

    result = run_submit(stack, [str(ok / "train.py"), "--ranks", "0"], token)
    assert result.returncode == 2
    with stack.http(token) as c:
        assert c.get("/jobs").json()["total"] == 0, "nothing was submitted by the refused commands"


def test_real_self_cognition_example(stack: Stack, tmp_path: Path, tiny_model_dir, self_cognition_file):
    example = ROOT / "examples" / "self_cognition.py"
    stack.start_worker("trainer", assets_dir=str(tiny_model_dir.parent))
    token = stack.create_user()
    # The job sees no environment of the submitter, so a two-line entrypoint sets the example's own knobs
    # (one epoch of the 80 bundled rows, a metric every 5 micro-batches) and runs it unchanged.
    project = tmp_path / "project"
    project.mkdir()
    (project / "self_cognition.py").write_text(example.read_text())
    (project / "train.py").write_text(
        "import os, runpy\n"
        "os.environ.update(DATA_ROWS='80', LOG_EVERY='5')\n"
        "runpy.run_path('self_cognition.py', run_name='__main__')\n"
    )
    result = run_submit(stack, [str(project / "train.py"), "--follow"], token, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + stack.diagnostics()
    job_id = result.stdout.split("submitted job", 1)[1].split()[0]
    with stack.http(token) as c:
        records = c.get(f"/jobs/{job_id}/metrics").json()["records"]
        artifacts = c.get(f"/jobs/{job_id}/artifacts").json()["items"]
    records = [r for r in records if not any(k.startswith("sys/") for k in r["metrics"])]  # the worker's samples
    assert len(records) >= 2 and all("loss" in r["metrics"] for r in records)
    job = stack.job(token, job_id)
    keys = s3_keys(stack, f"users/{job['user_id']}/jobs/{job_id}/attempts/")
    assert any(k.endswith("adapter_model.safetensors") for k in keys), sorted(keys)
    assert any(a["path"].endswith("adapter_model.safetensors") for a in artifacts)
