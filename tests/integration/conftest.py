"""The whole platform as real processes: API (``twinkle-scheduler serve``), dispatcher
(``twinkle-scheduler dispatch``), ``twinkle-worker`` daemons, real Redis, moto_server as S3, SQLite or
PostgreSQL. Short heartbeat, lease and start-deadline settings keep failure tests quick.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from contract.jobs import TERMINAL_STATES
from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENDED = TERMINAL_STATES

if shutil.which("twinkle-scheduler", path=str(BIN)) is None and not (BIN / "twinkle-scheduler").exists():
    pytest.skip("twinkle-scheduler is not installed", allow_module_level=True)


def _base_env() -> dict[str, str]:
    # the test process's own TWINKLE_* and AWS_* variables must not leak into the stack
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINKLE_", "AWS_", "REDIS_URL"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    health_port: int | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@dataclass
class Stack:
    tmp: Path
    api_url: str
    admin_token: str
    redis_url: str
    database_url: str
    s3: dict
    procs: list[Proc] = field(default_factory=list)
    _worker_token: str | None = None

    # ------------------------------------------------------------ HTTP

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.api_url + "/api/v1", headers=headers, timeout=30)

    def create_user(self, name: str | None = None) -> str:
        with self.http(self.admin_token) as c:
            r = c.post("/users", json={"name": name or f"user-{uuid.uuid4().hex[:6]}"})
            assert r.status_code in (200, 201), r.text
            return r.json()["token"]

    def worker_token(self) -> str:
        if self._worker_token is None:
            with self.http(self.admin_token) as c:
                r = c.post("/worker-tokens", json={"owner": "tests"})
                assert r.status_code in (200, 201), r.text
                self._worker_token = r.json()["token"]
        return self._worker_token

    def job(self, token: str, job_id: str) -> dict:
        with self.http(token) as c:
            r = c.get(f"/jobs/{job_id}")
            r.raise_for_status()
            return r.json()

    def wait_job(self, token: str, job_id: str, states=ENDED, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        with self.http(token) as c:
            while True:
                job = c.get(f"/jobs/{job_id}").json()
                if job.get("state") in states:
                    return job
                if time.monotonic() > deadline:
                    raise AssertionError(f"job {job_id} still {job.get('state')} after {timeout}s:\n{self.diagnostics()}")
                time.sleep(0.2)

    def submit_api(
        self, token: str, script: str, *, name: str = "job", request: dict | None = None,
        allow_unsandboxed: bool = False,
    ) -> dict:
        """Submit through the API; ``allow_unsandboxed`` lets the job run on workers with isolation ``none``."""
        data = {"name": name, "entrypoint": "train.py"}
        if request:
            data["request"] = json.dumps(request)
        if allow_unsandboxed:
            data["allow_unsandboxed"] = "true"
        with self.http(token) as c:
            r = c.post("/jobs", data=data, files={"file": ("train.py", script.encode(), "text/x-python")})
            assert r.status_code == 201, r.text
            return r.json()

    # ------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log_path = self.tmp / f"{name}.log"
        popen = subprocess.Popen(
            args, env=env, cwd=self.tmp, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the child's
            stdin=subprocess.DEVNULL,
        )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str, *, wait: bool = True, **settings: str) -> Proc:
        health_port = free_port()
        env = _base_env()
        env.update(
            TWINKLE_WORKER_SERVER_URL=self.api_url,
            TWINKLE_WORKER_TOKEN=self.worker_token(),
            TWINKLE_WORKER_NAME=name,
            TWINKLE_WORKER_WORK_DIR=str(self.tmp / f"work-{name}"),
            TWINKLE_WORKER_HEALTH_PORT=str(health_port),
            TWINKLE_WORKER_HEALTH_HOST="127.0.0.1",
            TWINKLE_WORKER_KILL_GRACE_S="2",
            TWINKLE_WORKER_LOG_FLUSH_INTERVAL_S="0.2",
            TWINKLE_WORKER_LOG_LEVEL="INFO",
            TWINKLE_WORKER_DEVICE_TYPE="cpu",  # no CUDA probe: tests offer the CPU unless they say otherwise
        )
        env.update({f"TWINKLE_WORKER_{k.upper()}": str(v) for k, v in settings.items()})
        proc = self._spawn(f"worker-{name}", [str(BIN / "twinkle-worker")], env)
        proc.health_port = health_port
        if wait:
            self.wait_worker_ready(proc)
        return proc

    def wait_worker_ready(self, proc: Proc, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.alive(), f"{proc.name} exited:\n{proc.log()}"
            try:
                healthy = httpx.get(f"http://127.0.0.1:{proc.health_port}/healthz", timeout=1).status_code == 200
                if healthy and "consuming" in proc.log() and ("ready" in proc.log() or "Connected to" in proc.log()):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{proc.name} not ready after {timeout}s:\n{proc.log()}")

    def diagnostics(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-6000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:  # signal all first, then wait: shutdowns overlap
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            proc.stop()


def scheduler_env(tmp: Path, database_url: str, redis_url: str, s3: dict, admin_token: str, port: int) -> dict:
    env = _base_env()
    env.update(
        TWINKLE_SCHEDULER_DATABASE_URL=database_url,
        TWINKLE_SCHEDULER_REDIS_URL=redis_url,
        TWINKLE_SCHEDULER_BROKER_PUBLIC_URL=redis_url,
        TWINKLE_SCHEDULER_ADMIN_TOKEN=admin_token,
        TWINKLE_SCHEDULER_SECRET_KEY="e2e-secret-" + uuid.uuid4().hex,
        TWINKLE_SCHEDULER_S3_ENDPOINT_URL=s3["endpoint_url"],
        TWINKLE_SCHEDULER_S3_BUCKET=s3["bucket"],
        TWINKLE_SCHEDULER_S3_REGION=s3["region"],
        TWINKLE_SCHEDULER_S3_ACCESS_KEY_ID=s3["access_key_id"],
        TWINKLE_SCHEDULER_S3_SECRET_ACCESS_KEY=s3["secret_access_key"],
        TWINKLE_SCHEDULER_STORAGE_DIR=str(tmp / "storage"),
        TWINKLE_SCHEDULER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        TWINKLE_SCHEDULER_HEARTBEAT_INTERVAL_S="0.5",
        TWINKLE_SCHEDULER_LEASE_S="3",
        TWINKLE_SCHEDULER_START_DEADLINE_S="6",
        TWINKLE_SCHEDULER_DISPATCH_INTERVAL_S="0.2",
        TWINKLE_SCHEDULER_MAX_BUNDLE_MB="5",
        TWINKLE_SCHEDULER_HOST="127.0.0.1",
        TWINKLE_SCHEDULER_PORT=str(port),
    )
    if os.environ.get("TWINKLE_E2E_STORAGE") == "local":  # debugging aid: the local storage backend instead of S3
        for key in [k for k in env if k.startswith("TWINKLE_SCHEDULER_S3_")]:
            del env[key]
    return env


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path) -> str:
    """SQLite by default; tests that also run on PostgreSQL parametrize this fixture indirectly."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'twinkle.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa

    name = f"twinkle_e2e_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - no CREATE DATABASE right: nothing to test against
        admin.dispose()
        pytest.skip(f"cannot create a PostgreSQL database for the e2e test: {exc.__class__.__name__}")
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def stack(tmp_path, database_url, redis_url, s3_bucket) -> Stack:
    """API + dispatcher on a fresh database, Redis db and bucket; workers are started by the test."""
    with running_stack(tmp_path, database_url, redis_url, s3_bucket) as s:
        yield s


@contextlib.contextmanager
def running_stack(tmp_path: Path, database_url: str, redis_url: str, s3: dict | None):
    """The API and the dispatcher as real processes; S3 storage when ``s3`` is given, else a local folder."""
    admin_token = "admin-" + uuid.uuid4().hex
    port = free_port()
    no_s3 = dict.fromkeys(("endpoint_url", "bucket", "region", "access_key_id", "secret_access_key"), "")
    env = scheduler_env(tmp_path, database_url, redis_url, s3 or no_s3, admin_token, port)
    if not s3:
        for key in [k for k in env if k.startswith("TWINKLE_SCHEDULER_S3_")]:
            del env[key]  # the local storage backend under tmp_path
    s = Stack(tmp_path, f"http://127.0.0.1:{port}", admin_token, redis_url, database_url, s3 or {})
    try:
        api = s._spawn("api", [str(BIN / "twinkle-scheduler"), "serve"], env)
        wait_for_port("127.0.0.1", port, timeout=60)
        assert api.alive(), api.log()
        s._spawn("dispatcher", [str(BIN / "twinkle-scheduler"), "dispatch"], env)
        yield s
    finally:
        s.close()


def run_submit(stack: Stack, args: list[str], token: str | None, timeout: float = 120, **env_extra) -> subprocess.CompletedProcess:
    """Run the real ``twinkle-submit`` console script."""
    env = _base_env()
    env["TWINKLE_API_URL"] = stack.api_url
    env["XDG_CONFIG_HOME"] = str(stack.tmp / "no-config")
    env["COLUMNS"] = "200"
    if token:
        env["TWINKLE_TOKEN"] = token
    env.update(env_extra)
    return subprocess.run(
        [str(BIN / "twinkle-submit"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=stack.tmp
    )
