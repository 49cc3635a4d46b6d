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
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TWINKLE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "webui"
# Small enough that the oversized-upload test sends only a couple of MB.
MAX_BUNDLE_MB = 1.0
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def _missing_stack_parts() -> list[str]:
    missing = []
    try:
        import scheduler.main  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means the API cannot start
        missing.append(f"scheduler.main ({exc.__class__.__name__}: {exc})")
    try:
        import scheduler.cli  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        missing.append(f"scheduler.cli ({exc.__class__.__name__}: {exc})")
    return missing


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
        # Each child leads its own process group, so a worker's training job goes with it.
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
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

    def start_worker(self, name: str = "webui-test-worker") -> Proc:
        env = dict(self.env)
        env.update(
            {
                "TWINKLE_WORKER_SERVER_URL": self.url,
                "TWINKLE_WORKER_TOKEN": self.worker_token,
                "TWINKLE_WORKER_NAME": name,
                "TWINKLE_WORKER_WORK_DIR": str(self.home / f"worker-{name}"),
                "TWINKLE_WORKER_DEVICE_TYPE": "cpu",
                "TWINKLE_WORKER_RANKS": "1",
                "TWINKLE_WORKER_HEALTH_PORT": "0",
                "TWINKLE_WORKER_KILL_GRACE_S": "2",
            }
        )
        proc = _spawn(f"worker-{name}", [_tool("twinkle-worker")], env, self.home, self.home)
        self.procs.append(proc)
        return proc

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


def start_stack(home: Path, redis_url: str, *, dispatcher: bool = True) -> Stack:
    """Start the API (and the dispatcher) in ``home``; the caller stops it."""
    missing = _missing_stack_parts()
    if missing:
        pytest.skip("the scheduler API is not importable yet: " + "; ".join(missing))
    port = free_port()
    admin = "twk_admin_" + secrets.token_urlsafe(16)
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(
        {
            "TWINKLE_SCHEDULER_DATABASE_URL": f"sqlite:///{home / 'twinkle.db'}",
            "TWINKLE_SCHEDULER_REDIS_URL": redis_url,
            "TWINKLE_SCHEDULER_ADMIN_TOKEN": admin,
            "TWINKLE_SCHEDULER_SECRET_KEY": secrets.token_urlsafe(32),
            "TWINKLE_SCHEDULER_STORAGE_DIR": str(home / "storage"),
            "TWINKLE_SCHEDULER_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TWINKLE_SCHEDULER_HOST": "127.0.0.1",
            "TWINKLE_SCHEDULER_PORT": str(port),
            "TWINKLE_SCHEDULER_MAX_BUNDLE_MB": str(MAX_BUNDLE_MB),
            "TWINKLE_SCHEDULER_HEARTBEAT_INTERVAL_S": "1",
            "TWINKLE_SCHEDULER_LEASE_S": "10",
            "TWINKLE_SCHEDULER_DISPATCH_INTERVAL_S": "0.5",
            "PYTHONUNBUFFERED": "1",
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
            r.raise_for_status()
            stack.user_token = r.json()["token"]
            r = c.post("/worker-tokens", json={"owner": "grace"})
            r.raise_for_status()
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
