"""Worker pieces without a server: settings, device offers, the client's error mapping, bundle unpacking."""

from __future__ import annotations

import io
import zipfile

import httpx
import pytest

from worker.client import AuthError, Conflict, InvalidRequest, NotFound, ServerUnavailable, StaleAttempt, WorkerClient
from worker.devices import DeviceGroupOffer, detect_devices, offer_from_settings
from worker.settings import WorkerSettings
from worker.tasks import BundleError, latest_checkpoint, unpack_bundle


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TWINKLE_WORKER_SERVER_URL", "http://api:8000/")
    monkeypatch.setenv("TWINKLE_WORKER_TOKEN", "twk_w_x")
    monkeypatch.setenv("TWINKLE_WORKER_RANKS", "2")
    monkeypatch.setenv("TWINKLE_WORKER_WORK_DIR", str(tmp_path))
    s = WorkerSettings()
    assert s.server_url == "http://api:8000" and s.token_value() == "twk_w_x" and s.ranks == 2
    assert "twk_w_x" not in repr(s)  # a SecretStr never lands in a log line


def test_settings_errors_say_what_to_do(monkeypatch):
    monkeypatch.delenv("TWINKLE_WORKER_TOKEN", raising=False)
    with pytest.raises(ValueError, match="worker-tokens"):
        WorkerSettings().token_value()
    with pytest.raises(ValueError, match="http://"):
        WorkerSettings(server_url="api:8000")
    with pytest.raises(ValueError):
        WorkerSettings(ranks=0)


def test_cpu_detection_and_overrides():
    found = detect_devices()
    assert found.ranks >= 1 and found.device_type in ("cpu", "cuda")
    cpu = DeviceGroupOffer("default", 1, "cpu", "Some CPU", 16.0)
    assert offer_from_settings(WorkerSettings(ranks=4), cpu) == DeviceGroupOffer(
        "default", 4, "cpu", "Some CPU", 16.0, pooled=True  # devices are shared by count unless the donor says not
    )
    fake_gpu = offer_from_settings(WorkerSettings(device_type="cuda", ranks=2, memory_gb=24, share_devices=False), cpu)
    assert fake_gpu == DeviceGroupOffer("default", 2, "cuda", None, 24.0)  # the CPU's model is not a GPU's


def _client(status: int, body: dict | str) -> WorkerClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.Response(status, json=body)
        return httpx.Response(status, text=body)

    return WorkerClient("http://api", "t", transport=httpx.MockTransport(handler), retries=1, backoff_s=0.01)


@pytest.mark.parametrize(
    "status,code,exc",
    [
        (401, "unauthorized", AuthError),
        (403, "forbidden", AuthError),
        (404, "not_found", NotFound),
        (409, "stale_attempt", StaleAttempt),
        (409, "already_started", Conflict),
        (422, "invalid", InvalidRequest),
        (503, "unavailable", ServerUnavailable),
    ],
)
def test_error_codes_map_to_exceptions(status, code, exc):
    client = _client(status, {"error": {"code": code, "message": "m", "fields": {"a": "b"}}})
    with pytest.raises(exc) as info:
        client.start("j", 1)
    assert info.value.code == code and info.value.status == status
    if exc is Conflict:
        assert not isinstance(info.value, StaleAttempt)


def test_non_json_error_body():
    with pytest.raises(ServerUnavailable, match="upstream down"):
        _client(500, "upstream down").finish("j", 1, "failed")


def test_transient_failures_are_retried_then_succeed(tmp_path):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503)
        assert request.headers["Content-Length"] == "5" and request.read() == b"hello"
        return httpx.Response(200, json={"attempt": 1, "path": "p", "size": 5})

    client = WorkerClient("http://api", "tok", transport=httpx.MockTransport(handler), retries=3, backoff_s=0.01)
    (tmp_path / "f").write_bytes(b"hello")
    client.put_artifact("j", 1, "output/ckpt/f", tmp_path / "f")
    assert len(calls) == 3  # the streamed body was made afresh for each try
    assert calls[-1].url.path == "/api/v1/attempts/j/1/artifacts/output/ckpt/f"
    assert calls[-1].headers["Authorization"] == "Bearer tok"


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_unpack_bundle(tmp_path):
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(_zip({"train.py": b"print(1)", "data/x.txt": b"x"}))
    unpack_bundle(bundle, tmp_path / "code", "train.py")
    assert (tmp_path / "code" / "train.py").read_text() == "print(1)"
    assert (tmp_path / "code" / "data" / "x.txt").read_text() == "x"


def test_bare_script_bundle(tmp_path):
    bundle = tmp_path / "b"
    bundle.write_text("print(2)")
    unpack_bundle(bundle, tmp_path / "code", "job.py")
    assert (tmp_path / "code" / "job.py").read_text() == "print(2)"


@pytest.mark.parametrize("entries,symlink", [({"../escape.py": b"x"}, None), ({"/abs.py": b"x"}, None), ({}, "link")])
def test_unsafe_bundles_are_refused(tmp_path, entries, symlink):
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(_zip(entries, symlink))
    with pytest.raises(BundleError):
        unpack_bundle(bundle, tmp_path / "code", "train.py")
    assert not (tmp_path / "escape.py").exists()


def test_latest_checkpoint_choice():
    paths = ["output/checkpoint-5/a", "output/checkpoint-20/a", "output/last-checkpoint/a", "output/x.txt"]
    assert latest_checkpoint(paths) == "output/checkpoint-20"
    assert latest_checkpoint(["output/last-checkpoint/a", "output/best/a"]) == "output/last-checkpoint"
    assert latest_checkpoint(["output/x.txt"]) is None


def test_a_donor_offers_a_shared_pool_unless_it_asks_for_one_job_at_a_time():
    import json as _json
    import os
    import subprocess
    import sys as _sys

    env = {**os.environ, "TWINKLE_WORKER_DEVICE_TYPE": "cpu", "TWINKLE_WORKER_RANKS": "4"}
    env.pop("TWINKLE_WORKER_TOKEN", None)

    def offer(*flags: str) -> dict:
        done = subprocess.run([_sys.executable, "-m", "worker.main", "--show-devices", *flags], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return _json.loads(done.stdout)

    assert offer()["pooled"] is True and offer()["ranks"] == 4
    assert offer("--one-job-at-a-time")["pooled"] is False


@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_the_health_endpoint_binds_loopback_unless_told_otherwise(tmp_path, host, expected):
    import httpx

    from worker.daemon import WorkerDaemon
    from worker.sandbox import create_sandbox
    from worker.settings import WorkerSettings

    extra = {} if host is None else {"health_host": host}
    settings = WorkerSettings(server_url="http://127.0.0.1:9", token="twk_w_x", work_dir=tmp_path,
                              device_type="cpu", isolation="container", health_port=0, **extra)
    daemon = WorkerDaemon(settings, sandbox=create_sandbox("container"))
    port = daemon.start_health_server()
    try:
        assert daemon._health is not None and daemon._health.server_address[0] == expected
        # answered on loopback either way (503: it has not heartbeated yet)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 503
    finally:
        daemon.stop()


@pytest.mark.parametrize(("share", "ranks", "threads"), [(True, 3, 3), (False, 3, 1)])
def test_the_daemon_holds_one_claim_per_attempt_it_may_run_side_by_side(tmp_path, share, ranks, threads):
    """A pool of N devices runs up to N attempts at once, so it holds N claims (one thread each); a static slot
    runs one job at a time on all its devices: one claim."""
    from worker.daemon import WorkerDaemon
    from worker.sandbox import create_sandbox
    from worker.settings import WorkerSettings

    settings = WorkerSettings(server_url="http://127.0.0.1:9", token="twk_w_x", work_dir=tmp_path, device_type="cpu",
                              ranks=ranks, share_devices=share, isolation="container", health_port=0)
    assert WorkerDaemon(settings, sandbox=create_sandbox("container")).concurrency == threads


def test_an_attempt_gets_the_share_of_the_workers_limits_that_its_devices_are_of_the_pool():
    from worker.sandbox import Limits

    gib = 1024**3
    whole = Limits(memory_bytes=16 * gib, pids=512, cpus=8.0, disk_bytes=40 * gib)
    quarter = whole.share(1, 4)
    assert (quarter.memory_bytes, quarter.cpus, quarter.disk_bytes, quarter.pids) == (4 * gib, 2.0, 10 * gib, 512)
    assert whole.share(4, 4) == whole and whole.share(2, 1) == whole  # all of it (or an API older than pools)
    assert Limits(cpus=2.0).share(1, 8).cpus == 1.0  # never below one CPU
    assert Limits(memory_bytes=None).share(1, 2).memory_bytes is None
    assert quarter.describe() == "memory 4 GiB, disk 10 GiB, 2 CPUs, 512 processes"
    assert Limits().describe() == "none"
