from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from contract import routes
from scheduler.db import Base, Database
from scheduler.settings import Settings

ADMIN_TOKEN = "test-admin-token"


def make_settings(tmp_path: Path, *, database_url: str | None = None, redis_url: str, **overrides: Any) -> Settings:
    """Settings for a test: SQLite (or ``database_url``) and local storage under ``tmp_path``, fast timings."""
    values: dict[str, Any] = dict(
        database_url=database_url or f"sqlite:///{tmp_path / 'twinkle.db'}",
        redis_url=redis_url,
        storage_dir=tmp_path / "storage",
        secret_key="test-secret-key",
        admin_token=ADMIN_TOKEN,
        heartbeat_interval_s=1.0,
        lease_s=5.0,
        start_deadline_s=10.0,
        max_bundle_mb=1.0,
        # no spot checks unless a test asks: most tests have no trusted worker to replay on
        replay_fraction=0.0,
        replay_first_n=0,
        # no known-answer canary unless a test asks: most tests give a new donor a user's job at once
        canary_required=False,
        # exact queue estimates: tests check positions right after the queue changed
        queue_estimate_ttl_s=0.0,
    )
    values.update(overrides)
    return Settings(**values)


def make_app(settings: Settings) -> tuple[Any, Any]:
    """(FastAPI app, Runtime), with the database migrated."""
    from scheduler.main import create_app
    from scheduler.runtime import Runtime

    rt = Runtime.from_settings(settings)
    return create_app(runtime=rt), rt


def reset_database(db: Database) -> None:
    """Empty every table (children first), keeping the migrated schema, and forget this process's queue snapshots
    of it (tests reuse database URLs: an earlier test's snapshot would describe a queue that is gone)."""
    from scheduler.services import queue

    with db.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(sa.delete(table))
    queue.forget_snapshots()


def _api(template: str, **params: object) -> str:
    return routes.API_PREFIX + routes.path(template, **params)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_user(client: Any, name: str) -> str:
    """Create a user through the API with the admin token; returns its token."""
    r = client.post(_api(routes.USERS), json={"name": name}, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201, r.text
    return r.json()["token"]


def job_view(client: Any, token: str, job_id: str) -> dict:
    """``GET /jobs/{id}`` as the user with ``token`` sees it."""
    return dict(client.get(_api(routes.JOB, job_id=job_id), headers=auth(token)).json())


def workers_by_name(client: Any, token: str) -> dict[str, dict]:
    """``GET /workers`` as the user with ``token`` sees it, by worker name."""
    return {w["name"]: w for w in client.get(_api(routes.WORKERS), headers=auth(token)).json()["items"]}


def dispatch_once(env: Any) -> None:
    """One matcher round of the dispatcher, with the env's replay and canary policy."""
    from scheduler.services import dispatch
    from scheduler.services.validation import ReplayPolicy

    dispatch.dispatch_round(env.rt.db, env.rt.redis, ReplayPolicy.from_settings(env.settings))


def create_worker_token(client: Any, owner: str = "tests", *, trusted: bool = False) -> str:
    """A worker token made with the admin token; ``trusted``: a platform pool (runs replays, never sampled)."""
    r = client.post(_api(routes.WORKER_TOKENS), json={"owner": owner, "trusted": trusted}, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201, r.text
    return r.json()["token"]


def submit_script(
    client: Any, token: str, source: str, *, filename: str = "train.py", request: dict | None = None, **data: str
) -> Any:
    form = dict(data)
    if request is not None:
        form["request"] = json.dumps(request)
    return client.post(
        _api(routes.JOBS), files={"file": (filename, source.encode())}, data=form, headers=auth(token)
    )


CPU_JOB = "from twinkle import DeviceGroup\nDeviceGroup(name='default', ranks=1, device_type='cpu')\nprint('hi')\n"
"""A script asking for one CPU rank (the scheduler reads it; the in-process worker never runs it)."""


def gpu_group(ranks: int = 1, memory_gb: float = 80.0, name: str = "default", model: str = "H100") -> dict:
    return {"name": name, "ranks": ranks, "device_type": "cuda", "device_model": model, "memory_gb": memory_gb}


def cpu_group(ranks: int = 1, name: str = "cpu") -> dict:
    return {"name": name, "ranks": ranks, "device_type": "cpu", "device_model": None, "memory_gb": None}


def probe_for(device_groups: list[dict]) -> dict:
    """A hardware probe that backs exactly ``device_groups`` (what an in-process worker sends unless told
    otherwise): one entry per GPU rank, one CPU entry counting the CPU ranks as cores."""
    devices: list[dict] = []
    for g in device_groups:
        kind = str(g.get("device_type", "cpu")).lower()
        if kind in ("cuda", "gpu", "npu"):
            devices += [
                {"device_type": kind, "device_model": g.get("device_model"), "count": 1,
                 "memory_gb": g.get("memory_gb"), "matmul_tflops": 100.0}
                for _ in range(int(g.get("ranks", 1)))
            ]
        else:
            devices.append({"device_type": kind, "device_model": g.get("device_model"), "count": int(g.get("ranks", 1)),
                            "memory_gb": g.get("memory_gb"), "matmul_tflops": 0.1})
    return {"devices": devices, "seconds": 0.1}


_AUTO: Any = object()


class InProcessWorker:
    """A worker speaking the scheduler's HTTP API through any httpx-like client (TestClient included).

    Its routes come from ``contract``; its bodies are plain dicts, so that tests can send what a hostile or broken
    worker would."""

    def __init__(
        self, client: Any, token: str, name: str, device_groups: list[dict], isolation: str | None = "bwrap",
        probe: dict | None = _AUTO,
    ) -> None:
        """``isolation`` is what it declares at registration (``None``: the field is left out, as an old worker
        does); scheduler tests stand in for a sandboxed worker unless they say otherwise. ``probe``: the hardware
        probe it sends (default: one that backs ``device_groups`` exactly; ``None``: none)."""
        self.client, self.token, self.name, self.device_groups = client, token, name, device_groups
        self.isolation = isolation
        self.probe = probe_for(device_groups) if probe is _AUTO else probe
        self.worker_id: str | None = None

    def _url(self, job_id: str, attempt: int, template: str) -> str:
        return _api(template, job_id=job_id, attempt=attempt)

    def try_register(self) -> Any:
        """The raw answer to a registration (tests of refused claims read it)."""
        return self.client.post(
            _api(routes.WORKER_REGISTER),
            json={
                "name": self.name, "hostname": self.name, "device_groups": self.device_groups,
                **({"isolation": self.isolation} if self.isolation is not None else {}),
                **({"probe": self.probe} if self.probe is not None else {}),
            },
            headers=auth(self.token),
        )

    def register(self) -> dict:
        r = self.try_register()
        assert r.status_code == 200, r.text
        body = r.json()
        self.worker_id = body["worker_id"]
        return body

    def claim(self, wait: float = 0) -> Any:
        """``POST /workers/{id}/claim?wait=``: 200 with ``{job_id, attempt}``, or 204 when nothing is assigned."""
        return self.client.post(
            _api(routes.WORKER_CLAIM, worker_id=self.worker_id), params={"wait": wait}, headers=auth(self.token)
        )

    def heartbeat(self, running: list[tuple[str, int]] = ()) -> Any:  # type: ignore[assignment]
        return self.client.post(
            _api(routes.WORKER_HEARTBEAT, worker_id=self.worker_id),
            json={"running": [{"job_id": j, "attempt": n} for j, n in running]},
            headers=auth(self.token),
        )

    def start(self, job_id: str, attempt: int) -> Any:
        return self.client.post(self._url(job_id, attempt, routes.ATTEMPT_START), headers=auth(self.token))

    def bundle(self, job_id: str, attempt: int) -> Any:
        return self.client.get(self._url(job_id, attempt, routes.ATTEMPT_BUNDLE), headers=auth(self.token))

    def logs(self, job_id: str, attempt: int, *texts: str, stream: str = "stdout") -> Any:
        lines = [{"ts": 0.0, "stream": stream, "text": t} for t in texts]
        return self.client.post(
            self._url(job_id, attempt, routes.ATTEMPT_LOGS), json={"lines": lines}, headers=auth(self.token)
        )

    def metrics(self, job_id: str, attempt: int, records: list[dict]) -> Any:
        return self.client.post(
            self._url(job_id, attempt, routes.ATTEMPT_METRICS), json={"records": records}, headers=auth(self.token)
        )

    def artifact(self, job_id: str, attempt: int, path: str, data: bytes, headers: dict | None = None) -> Any:
        h = {**auth(self.token), **(headers or {})}
        # the path goes as given (unquoted): tests send the hostile ones a broken worker would
        url = self._url(job_id, attempt, routes.ATTEMPT_ARTIFACT.replace("{path:path}", "")) + path
        return self.client.put(url, content=data, headers=h)

    def checkpoint(self, job_id: str, attempt: int, folder: str, files: dict[str, bytes]) -> None:
        """Upload a checkpoint folder as the real worker does: its files, then its completion marker."""
        import json as _json

        from contract.attempts import CHECKPOINT_MARKER

        for name, data in files.items():
            r = self.artifact(job_id, attempt, f"output/{folder}/{name}", data)
            assert r.status_code == 201, r.text
        marker = _json.dumps({"files": {name: len(data) for name, data in files.items()}}).encode()
        r = self.artifact(job_id, attempt, f"output/{folder}/{CHECKPOINT_MARKER}", marker)
        assert r.status_code == 201, r.text

    def finish(
        self, job_id: str, attempt: int, state: str = "succeeded", exit_code: int | None = 0, error: str | None = None,
        limit: str | None = None,
    ) -> Any:
        return self.client.post(
            self._url(job_id, attempt, routes.ATTEMPT_FINISH),
            json={"state": state, "exit_code": exit_code, "error": error, "limit": limit},
            headers=auth(self.token),
        )


def start_cpu_job(env: Any) -> tuple[Any, str, InProcessWorker, str]:
    """A user's CPU job, dispatched to a fresh in-process worker that has started it: (client, user token, worker,
    job id). ``env`` is the ``scheduler_env`` fixture's value."""
    from scheduler.services import dispatch

    c = env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    dispatch.dispatch_round(env.rt.db, env.rt.redis)
    assert w.start(jid, 1).status_code == 200
    return c, user, w, jid


def real_executor(env: Any, token: str, work_dir: Path, **worker_settings: Any) -> Any:
    """The real worker's ``AttemptExecutor`` (child process, metrics tailing, outbox), no sandbox, speaking to the
    in-process app of ``env`` through its test client; ``worker_settings`` override ``WorkerSettings``."""
    import httpx

    from worker.client import WorkerClient
    from worker.settings import WorkerSettings
    from worker.tasks import AttemptExecutor

    c = env.client

    def to_app(request: httpx.Request) -> httpx.Response:
        r = c.request(request.method, request.url.raw_path.decode(), content=request.content, headers=request.headers)
        return httpx.Response(r.status_code, content=r.content, headers=r.headers)

    client = WorkerClient("http://testserver", token, transport=httpx.MockTransport(to_app), retries=2, backoff_s=0.1)
    settings = WorkerSettings(**{"work_dir": work_dir, "log_flush_interval_s": 0.2, **worker_settings})
    return AttemptExecutor(client, settings)
