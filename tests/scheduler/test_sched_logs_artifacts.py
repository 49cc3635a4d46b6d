"""Live logs (SSE over Redis Streams), artifacts with presigned links, and the storage backends (local, S3)."""

from __future__ import annotations

import time

import httpx
import pytest

from scheduler.services import dispatch
from scheduler.storage import LocalStorage, ObjectNotFound, S3Storage
from scheduler.testing import InProcessWorker, auth, create_user, create_worker_token, submit_script
from scheduler.testing.factories import CPU_JOB, cpu_group, start_cpu_job
from scheduler.testing.fixtures import s3_overrides_for


@pytest.fixture()
def running(scheduler_env):
    return (scheduler_env, *start_cpu_job(scheduler_env))


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        ev: dict = {"event": "message", "data": []}
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            if key == "data":
                ev["data"].append(value)
            elif key in ("event", "id"):
                ev[key] = value
        if ev["data"] or ev["event"] != "message":
            ev["data"] = "\n".join(ev["data"])
            events.append(ev)
    return events


def test_sse_stream_of_a_finished_job_replays_and_ends(running):
    env, c, user, w, jid = running
    w.logs(jid, 1, "line one", "line two")
    w.finish(jid, 1)
    r = c.get(f"/api/v1/jobs/{jid}/logs/stream", headers=auth(user))
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    texts = [e["data"] for e in events if e["event"] == "message"]
    assert texts[1:3] == ["line one", "line two"] and "started on worker" in texts[0]
    assert events[-1]["event"] == "end" and events[-1]["data"] == "succeeded"
    # Last-Event-ID resumes after the given line.
    second = next(e for e in events if e.get("data") == "line one")["id"]
    r = c.get(f"/api/v1/jobs/{jid}/logs/stream", headers={**auth(user), "Last-Event-ID": second})
    assert next(e["data"] for e in parse_sse(r.text) if e["event"] == "message") == "line two"
    # With Redis emptied, a finished job's stream replays the persisted log.
    env.rt.redis.flushdb()
    replay = parse_sse(c.get(f"/api/v1/jobs/{jid}/logs/stream", headers=auth(user)).text)
    assert "line two" in [e["data"] for e in replay] and replay[-1]["event"] == "end"


def test_sse_stream_is_live(running, scheduler_env):
    """A real server: lines posted while a reader is connected arrive, then ``end`` closes the stream."""
    from scheduler.testing import serving

    env, _c, user, w, jid = running
    with serving(env.app) as url:
        got: list[str] = []
        with httpx.stream("GET", f"{url}/api/v1/jobs/{jid}/logs/stream", headers=auth(user), timeout=30) as resp:
            lines = resp.iter_lines()
            for line in lines:
                if line.startswith("data: ") and "started on worker" in line:
                    break
            w.logs(jid, 1, "live!")
            for line in lines:
                if line.startswith("data: "):
                    got.append(line[6:])
                    if line == "data: live!":
                        break
            w.finish(jid, 1, "failed", 1, "boom")
            rest = list(lines)
        assert got[-1] == "live!"
        assert "event: end" in rest and "data: failed" in rest


def test_artifacts_stream_to_storage_and_download_by_signed_link(running):
    env, c, user, w, jid = running
    r = w.artifact(jid, 1, "output/last-checkpoint/adapter.safetensors", b"0123456789")
    assert r.status_code == 201 and r.json()["size"] == 10
    listing = c.get(f"/api/v1/jobs/{jid}/artifacts", headers=auth(user)).json()["items"]
    assert [(a["attempt"], a["path"], a["size"]) for a in listing] == [(1, "output/last-checkpoint/adapter.safetensors", 10)]
    url = listing[0]["url"]
    assert "/api/v1/downloads/" in url
    path = url.split("testserver", 1)[1]
    got = c.get(path)
    assert got.status_code == 200 and got.content == b"0123456789"
    forged = c.get(path[:-3] + "abc")
    assert forged.status_code == 404
    job = c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()
    on_disk = env.tmp_path / "storage" / f"users/{job['user_id']}/jobs/{jid}/attempts/1/output/last-checkpoint/adapter.safetensors"
    assert on_disk.read_bytes() == b"0123456789"


@pytest.mark.parametrize("path", ["%2E%2E/x", "output/%2E%2E/%2E%2E/x", "%2Fetc/passwd", "a//b", "a/%2E/b", "a%5Cb"])
def test_artifact_paths_that_escape_are_refused(running, path):
    _env, c, user, w, jid = running
    r = c.put(f"/api/v1/attempts/{jid}/1/artifacts/{path}", content=b"x", headers=auth(w.token))
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_path", r.text
    assert c.get(f"/api/v1/jobs/{jid}/artifacts", headers=auth(user)).json()["items"] == []


def test_artifact_length_mismatch_keeps_nothing(running):
    env, c, user, w, jid = running

    def body():
        yield b"12345"

    r = c.put(f"/api/v1/attempts/{jid}/1/artifacts/output/a.bin", content=body(),
              headers={**auth(w.token), "Content-Length": "10"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "length_mismatch"
    assert c.get(f"/api/v1/jobs/{jid}/artifacts", headers=auth(user)).json()["items"] == []
    assert not [p for p in (env.tmp_path / "storage").rglob("a.bin")]
    r = c.put(f"/api/v1/attempts/{jid}/1/artifacts/output/a.bin", content=body(), headers=auth(w.token))
    assert r.status_code == 411  # streamed without a Content-Length


def test_local_storage_signed_links_expire(tmp_path):
    s = LocalStorage(tmp_path, "k")
    s.put_bytes("users/u/jobs/j/x.txt", b"hi")
    assert s.unsign(s.sign("users/u/jobs/j/x.txt", 60)) == "users/u/jobs/j/x.txt"
    with pytest.raises(ObjectNotFound, match="expired"):
        s.unsign(s.sign("users/u/jobs/j/x.txt", -1))
    with pytest.raises(ObjectNotFound):
        LocalStorage(tmp_path, "other-key").unsign(s.sign("users/u/jobs/j/x.txt", 60))
    with pytest.raises(ValueError):
        s.put_bytes("../escape", b"x")


def test_s3_backend_against_moto_server(s3_bucket):
    s = S3Storage(s3_bucket["bucket"], endpoint_url=s3_bucket["endpoint_url"], region=s3_bucket["region"],
                  access_key_id="testing", secret_access_key="testing")
    s.ping()
    assert s.put_bytes("users/u/jobs/j/bundle.zip", b"PK-data") == 7
    assert s.get_bytes("users/u/jobs/j/bundle.zip") == b"PK-data" and s.size("users/u/jobs/j/bundle.zip") == 7
    s.put_bytes("users/u/jobs/j/attempts/1/logs.txt", b"log")
    assert [o.key for o in s.list("users/u/jobs/j/")] == ["users/u/jobs/j/attempts/1/logs.txt", "users/u/jobs/j/bundle.zip"]
    url = s.presigned_url("users/u/jobs/j/bundle.zip", expires_s=60, base_url="ignored")
    assert "Signature" in url and httpx.get(url).content == b"PK-data"
    s.delete_prefix("users/u/")
    assert s.list("users/") == [] and not s.exists("users/u/jobs/j/bundle.zip")
    with pytest.raises(ObjectNotFound):
        s.get_bytes("users/u/jobs/j/bundle.zip")


@pytest.fixture()
def scheduler_overrides(request):
    return s3_overrides_for(request)


def test_api_on_s3_storage(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    assert isinstance(env.rt.storage, S3Storage)
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    dispatch.dispatch_round(env.rt.db, env.rt.redis)
    w.start(jid, 1)
    assert w.bundle(jid, 1).content[:2] == b"PK"
    w.artifact(jid, 1, "output/ckpt/w.bin", b"abc")
    w.logs(jid, 1, "hello s3")
    w.finish(jid, 1)
    url = c.get(f"/api/v1/jobs/{jid}/artifacts", headers=auth(user)).json()["items"][0]["url"]
    assert url.startswith(env.settings.s3_endpoint_url) and httpx.get(url).content == b"abc"
    time.sleep(0)  # logs were persisted synchronously by finish
    env.rt.redis.flushdb()
    assert "hello s3" in c.get(f"/api/v1/jobs/{jid}/logs", headers=auth(user)).text
