"""Outages end to end (real API, dispatcher, workers, Redis; local storage): a kill -9 of the API for two
leases while jobs run requeues nothing and loses nothing; a Redis outage loses no log line."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import httpx
import pytest

from scheduler.testing.stack import Stack, redis_url_of, running_stack, start_redis

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
    with running_stack(tmp_path, redis_url=redis_url) as s:
        yield s


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
    ids = [stack.submit(token, job_script(8.0), name=f"j{i}")["id"] for i in range(6)]
    deadline = time.monotonic() + 60
    with stack.http(token) as c:  # wait until jobs are running, so the outage hits them mid-run
        while sum(c.get(f"/jobs/{j}").json()["state"] == "running" for j in ids) < 3:
            assert time.monotonic() < deadline, stack.diagnostics()
            time.sleep(0.2)
    time.sleep(1.0)
    api = stack.service("api")
    api.kill9()
    time.sleep(2 * LEASE_S)  # two leases without an API: the dispatcher must not take silence for death
    api.restart()
    jobs = wait_all_ended(stack, token, ids, timeout=180)
    assert_complete_and_once(stack, token, jobs)
    assert "lease expired" not in stack.service("dispatcher").log()


def test_a_redis_outage_loses_no_log_line(tmp_path: Path):
    """Redis of its own (a real redis-server, killed and restarted on the same port with its AOF)."""
    redis = start_redis(tmp_path)
    try:
        with running_stack(tmp_path, redis_url=redis_url_of(redis)) as stack:
            token = stack.create_user()
            stack.start_worker("w1")
            stack.start_worker("w2")
            ids = [stack.submit(token, job_script(6.0), name=f"r{i}")["id"] for i in range(2)]
            deadline = time.monotonic() + 60
            with stack.http(token) as c:
                while sum(c.get(f"/jobs/{j}").json()["state"] == "running" for j in ids) < 2:
                    assert time.monotonic() < deadline, stack.diagnostics()
                    time.sleep(0.2)
            time.sleep(1.0)
            redis.kill9()
            time.sleep(5.0)  # log posts are answered 503; the workers keep the lines on disk
            with httpx.Client(base_url=stack.url) as c:
                assert c.get("/readyz").status_code == 503
            redis.restart()
            jobs = wait_all_ended(stack, token, ids, timeout=180)
            assert_complete_and_once(stack, token, jobs)
            api_log = stack.service("api").log()
            assert "Traceback" not in api_log, api_log[-3000:]
    finally:
        redis.stop()
