"""Quotas on everything a worker writes: artifact bytes per file and per attempt, log bytes per post and lines and
bytes per attempt, metric records per post and per attempt and their size, any JSON body. Over one: 413
``quota_exceeded`` naming the limit, nothing of it stored, and one line in the job's log saying so."""

from __future__ import annotations

import pytest

from scheduler.testing import auth
from scheduler.testing.factories import start_cpu_job

KIB = 1024


@pytest.fixture()
def scheduler_overrides():
    return {
        "max_artifact_mb": 2 * KIB / 1024 / 1024,  # 2 KiB per file
        "max_attempt_artifacts_mb": 3 * KIB / 1024 / 1024,  # 3 KiB per attempt
        "max_log_post_kb": 1.0,
        "max_attempt_log_lines": 6,
        "max_attempt_log_mb": 2 * KIB / 1024 / 1024,
        "max_metrics_per_post": 3,
        "max_attempt_metrics": 5,
        "max_metric_record_kb": 0.5,
        "max_json_body_mb": 64 * KIB / 1024 / 1024,
    }


def refused(r, limit: str) -> str:
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and err["fields"]["limit"] == limit, err
    assert f"TWINKLE_SCHEDULER_{limit}" in err["message"]
    return err["message"]


def job_log(c, user, jid) -> str:
    return c.get(f"/api/v1/jobs/{jid}/logs", headers=auth(user)).text


def artifacts(c, user, jid) -> dict[str, int]:
    return {a["path"]: a["size"] for a in c.get(f"/api/v1/jobs/{jid}/artifacts", headers=auth(user)).json()["items"]}


def test_an_artifact_over_the_file_quota_is_refused_before_its_body_and_noted_in_the_log(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    refused(w.artifact(jid, 1, "output/big.bin", b"x" * (2 * KIB + 1)), "MAX_ARTIFACT_MB")
    assert artifacts(c, user, jid) == {}
    assert "[platform] refused: the file output/big.bin" in job_log(c, user, jid)


def test_an_attempts_artifacts_together_are_bounded_and_a_replaced_file_counts_once(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    assert w.artifact(jid, 1, "output/a.bin", b"a" * 1500).status_code == 201
    assert w.artifact(jid, 1, "output/a.bin", b"b" * 1500).status_code == 201  # the same path again
    refused(w.artifact(jid, 1, "output/b.bin", b"c" * 1600), "MAX_ATTEMPT_ARTIFACTS_MB")
    assert w.artifact(jid, 1, "output/b.bin", b"c" * 1500).status_code == 201  # 3000 bytes: within 3 KiB
    assert artifacts(c, user, jid) == {"output/a.bin": 1500, "output/b.bin": 1500}


def test_a_log_post_over_its_byte_quota_is_refused(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    refused(w.logs(jid, 1, "y" * 600, "z" * 600), "MAX_LOG_POST_KB")
    assert "y" * 600 not in job_log(c, user, jid)


def test_an_attempts_log_lines_are_bounded_and_the_refusal_is_noted_once(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    assert w.logs(jid, 1, "one", "two", "three", "four").json() == {"accepted": 4}
    refused(w.logs(jid, 1, "five", "six", "seven"), "MAX_ATTEMPT_LOG_LINES")
    refused(w.logs(jid, 1, "eight", "nine", "ten"), "MAX_ATTEMPT_LOG_LINES")
    assert w.logs(jid, 1, "five", "six").json() == {"accepted": 2}  # exactly up to the quota
    refused(w.logs(jid, 1, "seven"), "MAX_ATTEMPT_LOG_LINES")
    text = job_log(c, user, jid)
    assert "six" in text and "seven" not in text and "eight" not in text
    assert text.count("[platform] refused") == 1


def test_an_attempts_log_bytes_are_bounded(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)
    assert w.logs(jid, 1, "a" * 1000).status_code == 200
    assert w.logs(jid, 1, "b" * 1000).status_code == 200
    refused(w.logs(jid, 1, "c" * 100), "MAX_ATTEMPT_LOG_MB")
    assert "c" * 100 not in job_log(c, user, jid)


def test_metrics_are_bounded_per_post_per_attempt_and_per_record(scheduler_env):
    c, user, w, jid = start_cpu_job(scheduler_env)

    def recs(*steps, size=10):
        return [{"step": s, "ts": float(s), "metrics": {"loss": 1.0, "pad": "p" * size}} for s in steps]

    refused(w.metrics(jid, 1, recs(1, 2, 3, 4)), "MAX_METRICS_PER_POST")
    refused(w.metrics(jid, 1, recs(1, size=600)), "MAX_METRIC_RECORD_KB")
    assert w.metrics(jid, 1, recs(1, 2, 3)).json() == {"accepted": 3}
    assert w.metrics(jid, 1, recs(1, 2, 3)).json() == {"accepted": 0}  # a retry adds nothing and is not over
    refused(w.metrics(jid, 1, recs(4, 5, 6)), "MAX_ATTEMPT_METRICS")
    assert w.metrics(jid, 1, recs(4, 5)).json() == {"accepted": 2}
    got = c.get(f"/api/v1/jobs/{jid}/metrics", headers=auth(user)).json()["records"]
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert "[platform] refused: a metrics post of 4 records" in job_log(c, user, jid)


def test_a_json_body_over_the_limit_is_refused_by_its_length_before_it_is_read(scheduler_env):
    c, _user, w, jid = start_cpu_job(scheduler_env)
    lines = [{"ts": 0.0, "stream": "stdout", "text": "q" * 1000} for _ in range(70)]
    r = c.post(f"/api/v1/attempts/{jid}/1/logs", json={"lines": lines}, headers=auth(w.token))
    refused(r, "MAX_JSON_BODY_MB")


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("metrics", {"records": [{"step": 2**63, "ts": 1.0, "metrics": {}}]}, "records.0.step"),
        ("metrics", {"records": [{"step": 1, "ts": 1e300, "metrics": {}}]}, "records.0.ts"),
        ("logs", {"lines": [{"ts": -5.0, "text": "x"}]}, "lines.0.ts"),
        ("logs", {"lines": [], "batch": 2**70}, "batch"),
        ("finish", {"state": "failed", "exit_code": 2**40}, "exit_code"),
    ],
)
def test_every_number_a_worker_sends_is_bounded_by_the_schema(scheduler_env, route, body, field):
    c, _user, w, jid = start_cpu_job(scheduler_env)
    r = c.post(f"/api/v1/attempts/{jid}/1/{route}", json=body, headers=auth(w.token))
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["fields"]


def test_the_workers_outbox_drops_a_refused_entry_once_and_delivers_the_rest(scheduler_env, tmp_path, caplog):
    """The real worker outbox against the real API: a 413 is never sent again (no retry loop), the entries
    behind it still go, and the attempt still finishes."""
    import logging

    from scheduler.testing import serving
    from worker.client import WorkerClient
    from worker.outbox import Outbox

    c, user, w, jid = start_cpu_job(scheduler_env)
    caplog.set_level(logging.ERROR, logger="worker.outbox")
    with serving(scheduler_env.app) as url:
        client = WorkerClient(url, w.token, retries=0)
        box = Outbox(client, jid, 1, tmp_path / "outbox", backoff_s=0.05)
        line = {"ts": 0.0, "stream": "stdout"}
        box.put_logs([{**line, "text": "y" * 700}, {**line, "text": "z" * 700}])
        box.put_logs([{**line, "text": "after the refused post"}])
        box.put_finish("succeeded", 0, None)
        assert box.wait_drained(timeout=60)
        box.close()
    refusals = [r for r in caplog.records if "quota_exceeded" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    text = job_log(c, user, jid)
    assert "after the refused post" in text and "y" * 700 not in text
    assert c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()["state"] == "succeeded"
