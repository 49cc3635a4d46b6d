"""Issue 18 end to end: a real ``twinkle-worker`` runs a real job submitted with variables and arguments, and the
API then shows what the page and the CLI need: stderr marked, paths relative to the job folder, the worker's name,
the failure with its stderr tail, ``sys/`` samples of the job's processes, and the TensorBoard event file."""

from __future__ import annotations

import io
import json
import textwrap
import zipfile

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

JOB = textwrap.dedent("""
    import json, os, sys, time
    print("args", sys.argv[1:], "LR", os.environ["LR"], flush=True)
    print("saved", os.path.join(os.environ["TWINKLE_OUTPUT_DIR"], "last-checkpoint"), flush=True)
    with open(os.environ["TWINKLE_METRICS_FILE"], "a") as f:
        for step in (1, 2, 3):
            f.write(json.dumps({"step": step, "ts": time.time(), "metrics": {"loss": 4.0 / step}}) + "\\n")
    t = time.time()
    while time.time() - t < 4:  # busy: the worker's samples see the CPU in use
        pass
    print("Traceback (most recent call last):", file=sys.stderr)
    print("RuntimeError: CUDA out of memory (pretend)", file=sys.stderr)
    sys.exit(3)
""")


def test_a_real_job_on_a_real_worker(platform):
    platform.start_worker("donor-cpu", sys_sample_s=0.5)  # bwrap, the default sandbox
    user = platform.create_user()
    with platform.http(user) as c:
        r = c.post("/jobs", data={"name": "e2e", "env": json.dumps({"LR": "1e-4"}),
                                  "args": json.dumps(["--epochs", "2"])},
                   files={"file": ("train.py", JOB.encode(), "text/x-python")})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
    job = platform.wait_job(user, job_id, timeout=120)
    assert job["state"] == "failed", platform.diagnostics()
    assert job["worker_name"] == "donor-cpu" and job["attempts"][0]["worker_name"] == "donor-cpu"
    failure = job["failure"]
    assert (failure["kind"], failure["summary"], failure["exit_code"]) == ("exit_code", "exit code 3", 3)
    assert failure["stderr_tail"][-1] == "RuntimeError: CUDA out of memory (pretend)"
    with platform.http(user) as c:
        lines = c.get(f"/jobs/{job_id}/logs", params={"format": "json"}).json()["lines"]
        text = [(e["stream"], e["text"]) for e in lines]
        assert ("stdout", "args ['--epochs', '2'] LR 1e-4") in text
        assert ("stdout", "saved output/last-checkpoint") in text  # relative to the job folder
        assert ("stderr", "RuntimeError: CUDA out of memory (pretend)") in text
        assert sum("attempt 1 failed" in t for _, t in text) == 1
        assert any(t == "attempt 1 started on worker donor-cpu" for _, t in text)
        assert all(e["ts"] for e in lines)
        records = c.get(f"/jobs/{job_id}/metrics").json()["records"]
        assert [r["metrics"]["loss"] for r in records if "loss" in r["metrics"]] == [4.0, 2.0, 4.0 / 3]
        samples = [r["metrics"] for r in records if "sys/cpu_percent" in r["metrics"]]
        assert samples and max(s["sys/cpu_percent"] for s in samples) > 5 and min(s["sys/rss_bytes"] for s in samples) > 0
        zipped = c.get(f"/jobs/{job_id}/artifacts/zip")
        assert zipped.status_code == 200, zipped.text
        names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
        assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names), names
