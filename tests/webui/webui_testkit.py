"""Helpers for the web UI tests: start the platform as child processes, screenshots, signing in."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scheduler.testing.net import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TWINKLE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "webui"
# Small enough that the oversized-upload test sends only a couple of MB.
MAX_BUNDLE_MB = 1.0
BIN = Path(sys.executable).parent




def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        # SIGTERM to the daemon alone: it stops its own job process groups on the way out.
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Each child leads its own session, so this reaches whatever it left behind.
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path, cwd: Path) -> Proc:
    log_path = logs / f"{name}.log"
    handle = open(log_path, "wb")  # noqa: SIM115 - the child owns it for its lifetime
    popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    handle.close()
    return Proc(name, popen, log_path)


@dataclass
class Stack:
    """A running platform: ``url`` of the API (which serves the UI at ``/``), an admin and a user token."""

    url: str
    admin_token: str
    user_token: str
    user_name: str
    worker_token: str
    home: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {token or self.user_token}"}, timeout=30
        )

    def new_user(self, name: str) -> str:
        with self.client(self.admin_token) as c:
            r = c.post("/users", json={"name": name})
            r.raise_for_status()
            return r.json()["token"]

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (exit {p.popen.poll()})\n{p.log()}" for p in self.procs)

    def start_worker(self, name: str = "grace-cpu", timeout: float = 90.0, **settings: str) -> Proc:
        """Start a real ``twinkle-worker`` offering one CPU, and wait until the API lists it and it is healthy.

        ``settings`` become ``TWINKLE_WORKER_<NAME>`` variables (e.g. ``assets_dir``).
        """
        health_port = free_port()
        env = base_env()
        env.update(
            {
                "TWINKLE_WORKER_SERVER_URL": self.url,
                "TWINKLE_WORKER_TOKEN": self.worker_token,
                "TWINKLE_WORKER_NAME": name,
                "TWINKLE_WORKER_WORK_DIR": str(self.home / f"work-{name}"),
                "TWINKLE_WORKER_DEVICE_TYPE": "cpu",
                "TWINKLE_WORKER_RANKS": "1",
                "TWINKLE_WORKER_HEALTH_HOST": "127.0.0.1",
                "TWINKLE_WORKER_HEALTH_PORT": str(health_port),
                "TWINKLE_WORKER_KILL_GRACE_S": "2",
                "TWINKLE_WORKER_LOG_FLUSH_INTERVAL_S": "0.2",
            }
        )
        env.update({f"TWINKLE_WORKER_{k.upper()}": str(v) for k, v in settings.items()})
        proc = _spawn(f"worker-{name}", [_tool("twinkle-worker")], env, self.home, self.home)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
            try:
                healthy = httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and self._worker_listed(name):
                return proc
            time.sleep(0.3)
        raise TimeoutError(f"{proc.name} not ready after {timeout}s:\n{proc.log()}")

    def _worker_listed(self, name: str) -> bool:
        with self.client() as c:
            r = c.get("/workers")
        if r.status_code != 200:
            return False
        body = r.json()
        items = body if isinstance(body, list) else body.get("items", [])
        return any(w.get("name") == name for w in items)

    def wait_job(self, job_id: str, states: set[str], timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                job = c.get(f"/jobs/{job_id}").json()
                if job.get("state") in states:
                    return job
                if time.monotonic() > deadline:
                    raise AssertionError(f"job {job_id} still {job.get('state')} after {timeout}s:\n{self.logs()}")
                time.sleep(0.2)

    def submit(self, script: str, *, name: str = "job", filename: str = "train.py") -> dict:
        with self.client() as c:
            r = c.post("/jobs", data={"name": name}, files={"file": (filename, script.encode(), "text/x-python")})
        assert r.status_code == 201, r.text
        return r.json()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{proc.log()}")


def base_env() -> dict[str, str]:
    """The test process's environment without its own TWINKLE_*, AWS_* and REDIS_URL, which must not leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINKLE_", "AWS_", "REDIS_URL"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_stack(home: Path, redis_url: str, *, s3: dict | None = None, dispatcher: bool = True) -> Stack:
    """Start the API (and the dispatcher) in ``home``, create a user and a worker token; the caller stops it.

    ``s3`` (endpoint_url, bucket, region, access_key_id, secret_access_key) puts checkpoints in an S3 bucket,
    so download links are presigned S3 URLs; without it they are the API's signed local links.
    """
    port = free_port()
    admin = "twk_admin_" + secrets.token_urlsafe(16)
    env = base_env()
    env.update(
        {
            "TWINKLE_SCHEDULER_DATABASE_URL": f"sqlite:///{home / 'twinkle.db'}",
            "TWINKLE_SCHEDULER_REDIS_URL": redis_url,
            "TWINKLE_SCHEDULER_BROKER_PUBLIC_URL": redis_url,
            "TWINKLE_SCHEDULER_ADMIN_TOKEN": admin,
            "TWINKLE_SCHEDULER_SECRET_KEY": secrets.token_urlsafe(32),
            "TWINKLE_SCHEDULER_STORAGE_DIR": str(home / "storage"),
            "TWINKLE_SCHEDULER_HOST": "127.0.0.1",
            "TWINKLE_SCHEDULER_PORT": str(port),
            "TWINKLE_SCHEDULER_MAX_BUNDLE_MB": str(MAX_BUNDLE_MB),
            "TWINKLE_SCHEDULER_HEARTBEAT_INTERVAL_S": "0.5",
            "TWINKLE_SCHEDULER_LEASE_S": "5",
            "TWINKLE_SCHEDULER_START_DEADLINE_S": "10",
            "TWINKLE_SCHEDULER_DISPATCH_INTERVAL_S": "0.2",
        }
    )
    if s3:
        env.update(
            {
                "TWINKLE_SCHEDULER_S3_ENDPOINT_URL": s3["endpoint_url"],
                "TWINKLE_SCHEDULER_S3_BUCKET": s3["bucket"],
                "TWINKLE_SCHEDULER_S3_REGION": s3["region"],
                "TWINKLE_SCHEDULER_S3_ACCESS_KEY_ID": s3["access_key_id"],
                "TWINKLE_SCHEDULER_S3_SECRET_ACCESS_KEY": s3["secret_access_key"],
            }
        )
    url = f"http://127.0.0.1:{port}"
    stack = Stack(url=url, admin_token=admin, user_token="", user_name="ada", worker_token="", home=home, env=env)
    scheduler = _tool("twinkle-scheduler")
    api = _spawn("api", [scheduler, "serve"], env, home, home)
    stack.procs.append(api)
    try:
        _wait_http(f"{url}/healthz", api)
        if dispatcher:
            stack.procs.append(_spawn("dispatch", [scheduler, "dispatch"], env, home, home))
        with httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {admin}"}, timeout=30) as c:
            r = c.post("/users", json={"name": stack.user_name})
            assert r.status_code in (200, 201), r.text
            stack.user_token = r.json()["token"]
            r = c.post("/worker-tokens", json={"owner": "grace"})
            assert r.status_code in (200, 201), r.text
            stack.worker_token = r.json()["token"]
    except BaseException:
        stack.stop()
        raise
    return stack


# ---------------------------------------------------------------- browser


def shot(page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/webui/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, stack: Stack, token: str | None = None) -> None:
    page.goto(f"{stack.url}/login")
    page.get_by_label("API token").fill(token or stack.user_token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}/")
