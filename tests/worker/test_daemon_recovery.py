"""The real ``twinkle-worker`` against the real API and dispatcher: it registers again when the API lost its
record, and a restarted daemon kills the job process group a SIGKILLed one left behind."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from scheduler.db.session import make_engine
from worker.leftovers import start_time

pytestmark = [pytest.mark.slow]


def wait_for(check, timeout: float, what: str, stack=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{stack.diagnostics()}" if stack else ""))


def worker_id(stack, token: str, name: str) -> str | None:
    with stack.http(token) as c:
        items = c.get("/workers").json()["items"]
    return next((w["id"] for w in items if w["name"] == name), None)


def alive(pid: int) -> bool:
    return start_time(pid) is not None  # a zombie nobody reaps counts as gone


# These jobs report their pid through a file outside their attempt folder, which a sandboxed job cannot write:
# they run on a trusted-pool worker (isolation none) and opt out of the sandbox (only such jobs go there). The
# sandboxed cases are in test_sandbox_attacks.py.
NO_SANDBOX = {"isolation": "none", "trusted_pool": "1"}


def test_worker_registers_again_after_the_api_lost_its_record_and_takes_a_new_job(platform, tmp_path: Path):
    proc = platform.start_worker("donor", **NO_SANDBOX)
    user = platform.create_user()
    old_id = worker_id(platform, user, "donor")
    marks = tmp_path / "marks"
    marks.mkdir()
    running = platform.submit(user, allow_unsandboxed=True, script=textwrap.dedent(
        f"""
        import os, time
        open(os.path.join({str(marks)!r}, "pid"), "w").write(str(os.getpid()))
        while True:
            print("working", flush=True)
            time.sleep(0.2)
        """
    ), name="long")
    platform.wait_job(user, running["id"], states={"running"}, timeout=30)
    job_pid = int(wait_for(lambda: (marks / "pid").exists() and (marks / "pid").read_text(), 15, "the long job"))

    engine = make_engine(platform.database_url)  # what a reset database or a reaper that deletes rows does
    with engine.begin() as conn:
        assert conn.execute(sa.text("DELETE FROM workers WHERE id = :id"), {"id": old_id}).rowcount == 1
    engine.dispose()

    # heartbeats every 0.5 s: the first one answered 404 registers again
    new_id = wait_for(lambda: (w := worker_id(platform, user, "donor")) not in (None, old_id) and w, 3,
                      "the worker to register again", platform)
    health = httpx.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=5).json()
    assert health["worker_id"] == new_id
    # The long job's writes and the next heartbeat are refused/answered by the API for the old attempt: the
    # fence stops it (the lease at work), which frees the slot. The daemon itself must not have died.
    wait_for(lambda: not alive(job_pid), 10, "the API to stop the orphaned attempt", platform)
    assert proc.alive(), proc.log()

    job = platform.submit(user, allow_unsandboxed=True, script="print('on the new identity')\n", name="after")
    done = platform.wait_job(user, job["id"], timeout=30)
    assert done["state"] == "succeeded", (done, platform.diagnostics())
    assert [a["worker_id"] for a in done["attempts"]] == [new_id]
    log = proc.log()
    assert f"does not know worker {old_id}" in log and f"registered as worker {new_id}" in log
    assert "Traceback" not in log, log


def test_restarted_worker_kills_the_job_group_a_sigkilled_worker_left(platform, tmp_path: Path):
    first = platform.start_worker("donor", **NO_SANDBOX)
    user = platform.create_user()
    marker = tmp_path / "grandchild.pid"
    job = platform.submit(user, allow_unsandboxed=True, script=textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # a torchrun rank, say
        open({str(marker)!r}, "w").write(str(child.pid))
        time.sleep(3600)
        """
    ), name="holds-the-gpu")
    grandchild = None
    try:
        platform.wait_job(user, job["id"], states={"running"}, timeout=30)
        grandchild = int(wait_for(lambda: marker.exists() and marker.read_text(), 15, "the grandchild", platform))
        pgid = os.getpgid(grandchild)  # the job's group: its leader is the job's python process
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        time.sleep(0.5)
        assert alive(grandchild), "the grandchild outlived its daemon: the orphan this cleanup is for"

        second = platform.start_worker("donor", **NO_SANDBOX)  # same name, same work dir
        assert not alive(grandchild)
        assert f"killing the leftover process group {pgid} of job {job['id']} attempt 1" in second.log(), second.log()
        assert second.alive()
    finally:
        if grandchild is not None and alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
