"""The user side of the API for ``twinkle-submit``: jobs, logs (plain and SSE), artifacts, script inspection.

Exceptions (every message says what to do next):

* ``SubmitError``
    * ``ConfigError``: no token, or a bad server URL
    * ``APIError`` (``status``, ``code``, ``fields``)
        * ``Unauthorized``: 401/403
        * ``JobNotFound``: 404
        * ``InvalidInput``: 400/413/422, with each field's problem
    * ``Unreachable``: no connection to the server
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urljoin

import httpx
from pydantic import BaseModel, ValidationError

from contract import routes
from contract.errors import error_from_body
from contract.jobs import ArtifactList, InspectResponse, Job, JobList, MetricsResponse, ResubmitRequest
from contract.workers import WorkerList

__all__ = [
    "DEFAULT_SERVER",
    "APIError",
    "Client",
    "ConfigError",
    "InvalidInput",
    "JobNotFound",
    "LogEvent",
    "SubmitError",
    "Unauthorized",
    "Unreachable",
    "config_path",
    "resolve_connection",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"
TOKEN_HELP = (
    "ask the platform admin for a user token (they create one with POST /api/v1/users), or make another from a "
    "token you have with POST /api/v1/users/me/tokens; then pass it with --token, set TWINKLE_TOKEN, or write "
    "token = \"twk_u_...\" to {config}"
)


class SubmitError(Exception):
    """A problem the user can act on; ``str()`` is the message to print."""


class ConfigError(SubmitError):
    pass


class APIError(SubmitError):
    def __init__(self, status: int, code: str, message: str, fields: dict | None = None):
        self.status, self.code, self.message, self.fields = status, code, message, fields or {}
        super().__init__(message)


class Unauthorized(APIError):
    pass


class JobNotFound(APIError):
    pass


class InvalidInput(APIError):
    pass


class Unreachable(SubmitError):
    pass


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "twinkle" / "config.toml"


def _read_config() -> dict:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix or delete it") from exc


def resolve_connection(server: str | None, token: str | None, *, need_token: bool = True) -> tuple[str, str | None]:
    """``--server`` / ``TWINKLE_API_URL`` / config / default, and ``--token`` / ``TWINKLE_TOKEN`` / config."""
    config = _read_config()
    server = server or os.environ.get("TWINKLE_API_URL") or config.get("server") or DEFAULT_SERVER
    token = token or os.environ.get("TWINKLE_TOKEN") or config.get("token")
    if not str(server).startswith(("http://", "https://")):
        raise ConfigError(f"server {server!r} is not a URL; pass e.g. --server http://127.0.0.1:8000")
    if need_token and not token:
        raise ConfigError("no API token. " + TOKEN_HELP.format(config=config_path()))
    return str(server).rstrip("/"), token


@dataclass
class LogEvent:
    id: str | None
    event: str
    data: str


def _error(response: httpx.Response) -> APIError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    parsed = error_from_body(response.status_code, body, response.reason_phrase)
    code, message, fields, status = parsed.code, parsed.message, parsed.fields, parsed.status
    if status in (401, 403):
        return Unauthorized(
            status, code, f"the server refused the token ({message}): it is wrong, expired or revoked. "
            "Check --token / TWINKLE_TOKEN / " + str(config_path()),
        )
    if status == 404:
        return JobNotFound(status, code, f"{message} (`twinkle-submit list` shows your jobs)", fields)
    if 400 <= status < 500:
        return InvalidInput(status, code, message, fields)
    return APIError(status, code, f"the server failed ({status} {code}: {message}); try again, or tell its admin")


def _parsed(model: type[BaseModel], response: httpx.Response) -> dict:
    """The response body read through the contract's model (a field the API renamed fails here, loudly), as JSON."""
    try:
        return model.model_validate(response.json()).model_dump(mode="json")
    except (ValueError, ValidationError) as exc:
        raise APIError(
            response.status_code, "unexpected_answer",
            f"the server's answer to {response.request.method} {response.request.url.path} is not what this "
            f"twinkle-submit expects ({exc.__class__.__name__}); upgrade twinkle-submit to the server's version",
        ) from exc


class Client:
    def __init__(self, server: str, token: str | None, *, timeout: float = 60.0, transport: Any = None):
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.server + routes.API_PREFIX, headers=headers, timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach {self.server} ({exc.__class__.__name__}: {exc}); is the platform running? "
                "Set the address with --server or TWINKLE_API_URL"
            ) from exc
        if response.is_error:
            raise _error(response)
        return response

    # ------------------------------------------------------------ jobs

    def web_url(self, job_id: str) -> str:
        """The job's page in the web UI."""
        return f"{self.server}/jobs/{quote(job_id, safe='')}"

    def submit(
        self, bundle: bytes, entrypoint: str, *, name: str | None = None, request: dict | None = None,
        filename: str = "bundle.zip", allow_unsandboxed: bool = False, launcher: str | None = None,
        env: dict[str, str] | None = None, args: list[str] | None = None,
    ) -> dict:
        import json

        data: dict[str, str] = {"entrypoint": entrypoint}
        if env:
            data["env"] = json.dumps(env)
        if args:
            data["args"] = json.dumps(args)
        if name:
            data["name"] = name
        if request:
            data["request"] = json.dumps(request)
        if allow_unsandboxed:
            data["allow_unsandboxed"] = "true"
        if launcher:
            data["launcher"] = launcher
        files = {"file": (filename, bundle, "application/zip")}
        return _parsed(Job, self._request("POST", routes.JOBS, data=data, files=files))

    def inspect(self, script: bytes, filename: str) -> dict:
        files = {"file": (filename, script, "text/x-python")}
        return _parsed(InspectResponse, self._request("POST", routes.SCRIPTS_INSPECT, files=files))

    def list_jobs(self, state: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        return _parsed(JobList, self._request("GET", routes.JOBS, params=params))

    def job(self, job_id: str) -> dict:
        return _parsed(Job, self._request("GET", routes.path(routes.JOB, job_id=job_id)))

    def resubmit(self, job_id: str, *, name: str | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None, request: dict | None = None) -> dict:
        """Run a job's bundle again as a new job; a field left as None keeps the original's value."""
        body = ResubmitRequest.model_validate({"name": name, "env": env, "args": args, "request": request})
        url = routes.path(routes.JOB_RESUBMIT, job_id=job_id)
        return _parsed(Job, self._request("POST", url, json=body.model_dump(mode="json")))

    def cancel(self, job_id: str) -> dict:
        return _parsed(Job, self._request("POST", routes.path(routes.JOB_CANCEL, job_id=job_id)))

    def workers(self) -> list[dict]:
        return _parsed(WorkerList, self._request("GET", routes.WORKERS))["items"]

    def revoke_worker(self, worker_id: str) -> None:
        """Revoke the worker token ``worker_id`` registered with (its owner, or the admin token)."""
        self._request("POST", routes.path(routes.WORKER_REVOKE, worker_id=worker_id))

    def logs(self, job_id: str, timestamps: bool = False) -> str:
        params = {"timestamps": "true"} if timestamps else None
        return self._request("GET", routes.path(routes.JOB_LOGS, job_id=job_id), params=params).text

    def metrics(self, job_id: str, series: str = "all") -> list[dict]:
        url = routes.path(routes.JOB_METRICS, job_id=job_id)
        return _parsed(MetricsResponse, self._request("GET", url, params={"series": series}))["records"]

    def metrics_csv(self, job_id: str, series: str = "all") -> str:
        url = routes.path(routes.JOB_METRICS, job_id=job_id)
        return self._request("GET", url, params={"format": "csv", "series": series}).text

    def download_zip(
        self, job_id: str, dest_dir: Path, *, attempt: int | None = None, folder: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Path:
        """Stream ``GET /jobs/{id}/artifacts/zip`` into ``dest_dir`` under the name the server gives; returns it."""
        params: dict[str, Any] = {}
        if attempt is not None:
            params["attempt"] = attempt
        if folder:
            params["folder"] = folder
        url = routes.path(routes.JOB_ARTIFACTS_ZIP, job_id=job_id)
        dest_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", url, params=params, timeout=httpx.Timeout(60.0, read=300.0)) as response:
                if response.is_error:
                    response.read()
                    raise _error(response)
                name = _attachment_name(response.headers.get("content-disposition", "")) or f"{job_id}.zip"
                dest = dest_dir / name
                _save_body(response, dest, on_bytes)
        except httpx.TransportError as exc:
            raise Unreachable(f"download of job {job_id}'s zip failed: {exc}") from exc
        return dest

    def artifacts(self, job_id: str) -> list[dict]:
        return _parsed(ArtifactList, self._request("GET", routes.path(routes.JOB_ARTIFACTS, job_id=job_id)))["items"]

    def stream_logs(self, job_id: str, last_event_id: str | None = None) -> Iterator[LogEvent]:
        """Server-sent events of the job's log until ``event: end``; reconnects with ``Last-Event-ID``."""
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            try:
                with self._http.stream("GET", routes.path(routes.JOB_LOGS_STREAM, job_id=job_id), headers=headers,
                                       timeout=httpx.Timeout(30.0, read=None)) as response:
                    if response.is_error:
                        response.read()
                        raise _error(response)
                    for event in _parse_sse(response.iter_lines()):
                        failures = 0
                        if event.id:
                            last_event_id = event.id
                        yield event
                        if event.event == "end":
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > 5:
                    raise Unreachable(
                        f"lost the log stream of {job_id} ({exc}); run `twinkle-submit logs {job_id}`"
                    ) from exc
                import time

                time.sleep(min(2.0 * failures, 10.0))
                continue
            # the server closed the stream without `end` (a proxy timeout, say): resume where we were
            failures += 1
            if failures > 5:
                return

    def download(self, url: str, dest: Path, on_bytes: Callable[[int], None] | None = None) -> int:
        """Fetch a (presigned) artifact URL to ``dest``; relative URLs are resolved against the server."""
        absolute = urljoin(self.server + "/", url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # presigned URLs carry their own auth; our bearer token must not travel to a storage host
            with httpx.stream("GET", absolute, timeout=httpx.Timeout(60.0, read=300.0)) as response:
                if response.is_error:
                    response.read()
                    raise _error(response)
                return _save_body(response, dest, on_bytes)
        except httpx.TransportError as exc:
            raise Unreachable(f"download of {url} failed: {exc}") from exc


def _save_body(response: httpx.Response, dest: Path, on_bytes: Callable[[int], None] | None) -> int:
    """Stream the body into ``dest`` through ``dest.part``, so a cut download never looks whole; bytes written."""
    tmp = dest.with_name(dest.name + ".part")
    total = 0
    with open(tmp, "wb") as f:
        for chunk in response.iter_bytes(1 << 20):
            f.write(chunk)
            total += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    tmp.replace(dest)
    return total


def _attachment_name(disposition: str) -> str | None:
    """The file name of ``Content-Disposition: attachment; filename="x.zip"``, reduced to a plain name (a server
    cannot make us write outside the folder)."""
    m = re.search(r'filename="([^"]+)"', disposition)
    name = PurePosixPath(m.group(1).replace("\\", "/")).name if m else ""
    return name if name and name not in (".", "..") else None


def _parse_sse(lines: Iterator[str]) -> Iterator[LogEvent]:
    data: list[str]
    event_id, event, data = None, "message", []
    for line in lines:
        if line == "":
            if data or event != "message":
                yield LogEvent(event_id, event, "\n".join(data))
            event_id, event, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "id":
            event_id = value
        elif key == "event":
            event = value
        elif key == "data":
            data.append(value)
    if data:
        yield LogEvent(event_id, event, "\n".join(data))
