"""An httpx client of the scheduler API, as a worker sees it.

Routes, bodies and error codes come from ``contract``; error responses become the exceptions of
``contract.errors`` (re-exported here; ``WorkerAPIError`` is ``ApiError``):

* ``WorkerAPIError`` (any 4xx/5xx; carries ``status``, ``code``, ``message``, ``fields``)
    * ``AuthError``: 401/403, the worker token is wrong or revoked
    * ``NotFound``: 404
    * ``Conflict``: 409 other than ``stale_attempt`` (e.g. the attempt was already started)
        * ``StaleAttempt``: 409 ``stale_attempt`` (or 403 ``not_your_attempt``): another attempt owns the job
    * ``Superseded``: 410, a newer registration with the same token took over this worker: stop
    * ``InvalidRequest``: 400/413/422 (``quota_exceeded``: over a limit of the platform; do not send it again)
    * ``ServerUnavailable``: 5xx or no connection; transient, retried before it is raised
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from contract import routes
from contract.attempts import FinishRequest, LogsRequest, MetricsRequest
from contract.errors import (
    ApiError,
    AuthError,
    Conflict,
    ErrorCode,
    InvalidRequest,
    NotFound,
    ServerUnavailable,
    StaleAttempt,
    Superseded,
    error_from_body,
)
from contract.workers import Assignment, HeartbeatRequest, HeartbeatResponse, RegisterWorkerRequest

__all__ = [
    "AuthError",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "ServerUnavailable",
    "StaleAttempt",
    "Superseded",
    "WorkerAPIError",
    "WorkerClient",
]

log = logging.getLogger(__name__)

WorkerAPIError = ApiError


def error_from_response(response: httpx.Response) -> ApiError:
    """Map an error response to the exception for its status and code."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return error_from_body(response.status_code, body, response.reason_phrase)


def _body(model: type[BaseModel], data: Any) -> dict[str, Any]:
    """``data`` checked against the contract's model, as JSON; a body the API would refuse fails here the same way."""
    try:
        return model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidRequest(422, ErrorCode.INVALID_REQUEST, f"{model.__name__}: {exc}") from exc


class WorkerClient:
    """Calls of the worker side of the API; every attempt write is fenced by ``(job_id, attempt)``.

    Transient failures (no connection, 502/503/504) are retried ``retries`` times with backoff, so a restart
    of the API does not fail a running job.
    """

    def __init__(
        self,
        server_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ):
        self._http = httpx.Client(
            base_url=server_url.rstrip("/") + routes.API_PREFIX,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )
        self.retries, self.backoff_s = retries, backoff_s

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            call_kwargs = dict(kwargs)
            if callable(call_kwargs.get("content")):  # a streamed body is made afresh for every try
                call_kwargs["content"] = call_kwargs["content"]()
            try:
                response = self._http.request(method, url, **call_kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ServerUnavailable(0, "unreachable", f"{method} {url}: {exc}") from exc
                log.warning("%s %s failed (%s); retrying in %.1fs", method, url, exc, delay)
            else:
                if response.status_code not in (502, 503, 504) or attempt == self.retries:
                    if response.is_error:
                        raise error_from_response(response)
                    return response
                retry_after = response.headers.get("retry-after", "")
                if retry_after.isdigit():  # the API knows how long its Redis or database needs
                    delay = max(delay, min(float(retry_after), 30.0))
                log.warning("%s %s answered %s; retrying in %.1fs", method, url, response.status_code, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")  # pragma: no cover


    # ------------------------------------------------------------ worker lifecycle

    def register(
        self, name: str, hostname: str, device_groups: list[dict], isolation: str | None = None,
        probe: dict | None = None,
    ) -> dict:
        """``isolation``: how this worker sandboxes the jobs it runs (bwrap, container, none); left out, the
        contract's default (``none``) is sent. ``probe``: the hardware probe (``worker.probe.run_probe``)."""
        data: dict[str, Any] = {"name": name, "hostname": hostname, "device_groups": device_groups}
        if isolation is not None:
            data["isolation"] = isolation  # in the checked body: setting it after _body would not override the default
        if probe is not None:
            data["probe"] = probe
        body = _body(RegisterWorkerRequest, data)
        return self._request("POST", routes.WORKER_REGISTER, json=body).json()

    def heartbeat(self, worker_id: str, running: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Report running attempts; returns the attempts the scheduler wants cancelled."""
        body = _body(HeartbeatRequest, {"running": [{"job_id": j, "attempt": n} for j, n in running]})
        # a heartbeat is retried by the next heartbeat, not here: a late one is worth less than a fresh one
        url = routes.path(routes.WORKER_HEARTBEAT, worker_id=worker_id)
        response = self._http.post(url, json=body)
        if response.is_error:
            raise error_from_response(response)
        return [(c.job_id, c.attempt) for c in HeartbeatResponse.model_validate(response.json()).cancel]

    def claim(self, worker_id: str, wait: float = 20.0) -> tuple[str, int] | None:
        """The next attempt assigned to this worker, waiting up to ``wait`` seconds (a long poll); ``None``:
        nothing yet. Not retried here: the claim loop claims again."""
        url = routes.path(routes.WORKER_CLAIM, worker_id=worker_id)
        response = self._http.post(url, params={"wait": wait}, timeout=wait + 15.0)
        if response.is_error:
            raise error_from_response(response)
        if response.status_code == 204:
            return None
        got = Assignment.model_validate(response.json())
        return got.job_id, got.attempt

    # ------------------------------------------------------------ attempt writes (fenced)

    def start(self, job_id: str, attempt: int) -> dict:
        return self._request("POST", routes.path(routes.ATTEMPT_START, job_id=job_id, attempt=attempt)).json()

    def download_bundle(self, job_id: str, attempt: int, dest: Path) -> Path:
        url = routes.path(routes.ATTEMPT_BUNDLE, job_id=job_id, attempt=attempt)
        with self._http.stream("GET", url) as response:
            return _save_response(response, dest)

    def download_url(self, url: str, dest: Path) -> Path:
        """Fetch a presigned link (an earlier attempt's checkpoint file); it carries its own auth."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        absolute = url if url.startswith(("http://", "https://")) else str(self._http.base_url.join(url))
        with httpx.stream("GET", absolute, timeout=self._http.timeout) as response:
            return _save_response(response, dest)

    def post_logs(self, job_id: str, attempt: int, lines: list[dict], batch: int | None = None) -> None:
        """``batch``: the sender's sequence number; the API applies a batch once however often it is sent."""
        url = routes.path(routes.ATTEMPT_LOGS, job_id=job_id, attempt=attempt)
        self._request("POST", url, json=_body(LogsRequest, {"lines": lines, "batch": batch}))

    def post_metrics(self, job_id: str, attempt: int, records: list[dict], batch: int | None = None) -> None:
        url = routes.path(routes.ATTEMPT_METRICS, job_id=job_id, attempt=attempt)
        self._request("POST", url, json=_body(MetricsRequest, {"records": records, "batch": batch}))

    def put_artifact(self, job_id: str, attempt: int, path: str, file: Path) -> None:
        size = file.stat().st_size

        def body() -> Iterable[bytes]:
            with open(file, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        # a generator body streams the file; Content-Length lets the API check it arrived whole
        self._request(
            "PUT",
            routes.path(routes.ATTEMPT_ARTIFACT, job_id=job_id, attempt=attempt, path=path),
            content=body,
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )

    def finish(
        self, job_id: str, attempt: int, state: str, exit_code: int | None = None, error: str | None = None,
        limit: str | None = None,
    ) -> dict:
        body = _body(FinishRequest, {"state": state, "exit_code": exit_code, "error": error, "limit": limit})
        url = routes.path(routes.ATTEMPT_FINISH, job_id=job_id, attempt=attempt)
        return self._request("POST", url, json=body).json()


def _save_response(response: httpx.Response, dest: Path) -> Path:
    """Write a streamed response to ``dest`` in 1 MiB chunks, or raise the API's error."""
    if response.is_error:
        response.read()
        raise error_from_response(response)
    with open(dest, "wb") as f:
        for chunk in response.iter_bytes(1 << 20):
            f.write(chunk)
    return dest
