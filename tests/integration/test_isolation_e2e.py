"""End to end with a real ``twinkle-worker``: a worker without a sandbox gets only jobs whose owner opted out,
and a job that cannot go anywhere else says why."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCRIPT = "from twinkle import DeviceGroup\nDeviceGroup(name='default', ranks=1, device_type='cpu')\nprint('ran here')\n"

# A trusted pool: the worker declares isolation 'none' (and says it is one); older workers that declare
# nothing count as 'none' too.
TRUSTED_POOL = {"isolation": "none", "trusted_pool": "1"}


def test_an_unsandboxed_worker_runs_only_jobs_that_opted_out(stack: Stack):
    stack.start_worker("bare", **TRUSTED_POOL)
    token = stack.create_user()
    with stack.http(token) as c:
        workers = {w["name"]: w for w in c.get("/workers").json()["items"]}
    assert workers["bare"]["isolation"] == "none"

    held = stack.submit(token, SCRIPT, name="needs-a-sandbox")
    opted_out = stack.submit(token, SCRIPT, name="trusts-the-pool", allow_unsandboxed=True)
    assert stack.wait_job(token, opted_out["id"])["state"] == "succeeded"
    with stack.http(token) as c:
        assert "ran here" in c.get(f"/jobs/{opted_out['id']}/logs").text

    # a positive signal that the dispatcher has looked at the held job with the worker idle: a job of the same
    # user submitted after it (so behind it in that user's queue) is dispatched to that worker and runs
    later = stack.submit(token, SCRIPT, name="after-the-held-one", allow_unsandboxed=True)
    assert stack.wait_job(token, later["id"])["state"] == "succeeded"
    job = stack.job(token, held["id"])
    assert job["state"] == "queued" and job["attempts"] == []
    assert job["pending_reason"].startswith("held: no sandboxed worker offers 1 cpu ranks")
    assert "--allow-unsandboxed" in job["pending_reason"]
