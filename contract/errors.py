"""The error envelope of the API, its codes, and the one way a client turns an error response into an exception.

Every error body is ``{"error": {"code": ErrorCode, "message": str, "fields": {name: problem}}}`` with a 4xx (or,
for an outage of a part the API needs, a 503) status. The scheduler raises ``scheduler.errors.SchedulerError``
subclasses carrying an :class:`ErrorCode`; clients call :func:`error_from_body`.

Exceptions a client gets (``status``, ``code``, ``message``, ``fields``):

- ``ApiError``: any error answer
  - ``AuthError``: 401/403, the token is wrong, revoked or of the wrong kind
  - ``NotFound``: 404 (another user's job is 404 too)
  - ``Conflict``: 409 other than a stale attempt (e.g. the attempt was already started, the job ended)
    - ``StaleAttempt``: 409 ``stale_attempt``, or 403 ``not_your_attempt``: another attempt owns the job
  - ``Superseded``: 410 ``worker_superseded``, a newer registration with the same token took over: stop
  - ``InvalidRequest``: 400/411/413/422, with each field's problem (``quota_exceeded``: ``fields`` names the limit)
  - ``ServerUnavailable``: 5xx, or no connection (``status`` 0); transient
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Every ``error.code`` the API answers with."""

    # 400
    BAD_REQUEST = "bad_request"
    BAD_UPLOAD = "bad_upload"
    TRUNCATED_UPLOAD = "truncated_upload"
    LENGTH_MISMATCH = "length_mismatch"
    BAD_PATH = "bad_path"
    # 401 / 403
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    WRONG_TOKEN_KIND = "wrong_token_kind"
    ADMIN_REQUIRED = "admin_required"
    CROSS_ORIGIN = "cross_origin"
    METRICS_TOKEN_REQUIRED = "metrics_token_required"
    NOT_YOUR_ATTEMPT = "not_your_attempt"
    TOKEN_REVOKED = "token_revoked"
    # 404 / 405
    NOT_FOUND = "not_found"
    JOB_NOT_FOUND = "job_not_found"
    ATTEMPT_NOT_FOUND = "attempt_not_found"
    WORKER_NOT_FOUND = "worker_not_found"
    DOWNLOAD_NOT_FOUND = "download_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # 409
    CONFLICT = "conflict"
    STALE_ATTEMPT = "stale_attempt"
    USER_EXISTS = "user_exists"
    JOB_ENDED = "job_ended"
    BUSY = "busy"
    # 410
    WORKER_SUPERSEDED = "worker_superseded"
    # 411 / 413 / 422
    LENGTH_REQUIRED = "length_required"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_REQUEST = "invalid_request"
    NOT_PYTHON = "not_python"
    SCRIPT_TOO_LARGE = "script_too_large"
    SCRIPT_TOO_COMPLEX = "script_too_complex"
    ARCHIVE_REJECTED = "archive_rejected"
    PROBE_MISSING = "probe_missing"
    CLAIM_BEYOND_PROBE = "claim_beyond_probe"
    TOO_MANY_RANKS = "too_many_ranks"
    QUOTA_EXCEEDED = "quota_exceeded"
    # 5xx, and client-side
    SERVICE_UNAVAILABLE = "service_unavailable"
    REDIS_UNAVAILABLE = "redis_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    DATABASE_BUSY = "database_busy"
    HTTP_ERROR = "http_error"
    UNREACHABLE = "unreachable"


def error_body(code: ErrorCode | str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"error": {"code": str(code), "message": message, "fields": fields or {}}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.fields = status, code, message, fields or {}


class AuthError(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class StaleAttempt(Conflict):
    pass


class Superseded(ApiError):
    pass


class InvalidRequest(ApiError):
    pass


class ServerUnavailable(ApiError):
    pass


def error_from_body(status: int, body: Any, reason: str = "") -> ApiError:
    """The exception for an error answer: its status, and its parsed JSON body (or ``None`` / raw text when the
    body was not the API's envelope, e.g. a proxy's error page)."""
    envelope = body.get("error") if isinstance(body, dict) else None
    envelope = envelope if isinstance(envelope, dict) else {}
    code = str(envelope.get("code") or reason or "error")
    raw = body if isinstance(body, str) else ""
    message = str(envelope.get("message") or raw[:500] or reason or f"HTTP {status}")
    fields = envelope.get("fields") if isinstance(envelope.get("fields"), dict) else None
    cls: type[ApiError]
    if code == ErrorCode.NOT_YOUR_ATTEMPT:  # the attempt was reassigned to another worker: stop, like a stale one
        cls = StaleAttempt
    elif code == ErrorCode.WORKER_SUPERSEDED or status == 410:
        cls = Superseded
    elif status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = StaleAttempt if code == ErrorCode.STALE_ATTEMPT else Conflict
    elif status >= 500 or status == 0:
        cls = ServerUnavailable
    else:
        cls = InvalidRequest
    return cls(status, code, message, fields)
