"""The known-answer canary end to end: a real ``twinkle-worker`` in its bwrap sandbox registers as a new donor,
runs the canary the platform drew for it (torch in float64, each loss through the metrics file twinkle writes),
passes it, and takes the user's job that waited for it."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

JOB = "print('the user job ran', flush=True)\n"


def test_a_new_donor_passes_its_canary_in_the_sandbox_and_then_runs_the_waiting_job(tmp_path, redis_server_url):
    import redis

    from scheduler.testing.stack import running_stack

    redis_url = redis_server_url.rstrip("/") + "/13"  # the worker tests' own db (see tests/worker/conftest.py)
    redis.Redis.from_url(redis_url).flushdb()
    with running_stack(tmp_path, redis_url=redis_url, canary_required=True) as stack:
        user = stack.create_user()
        with stack.http(user) as c:
            r = c.post("/jobs", files={"file": ("train.py", JOB.encode(), "text/x-python")})
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
        stack.start_worker("donor-cpu")  # bwrap, the default sandbox; a plain (untrusted) worker token
        job = stack.wait_job(user, job_id, timeout=180)
        assert job["state"] == "succeeded", stack.diagnostics()
        with stack.http(user) as c:
            [worker] = [w for w in c.get("/workers").json()["items"] if w["name"] == "donor-cpu"]
            log = c.get(f"/jobs/{job_id}/logs").text
        assert worker["canary"]["state"] == "passed", worker
        assert "agree within 1e-06" in worker["canary"]["detail"]
        assert worker["jobs_run"] == 2, "the canary, then the user's job"
        assert "the user job ran" in log
