"""Errors the scheduler's services raise; ``main.py`` maps them to JSON in one place.

Every error body is ``{"error": {"code": ..., "message": ..., "fields": {...}}}`` (``contract.errors``).

- ``SchedulerError``: base; ``status`` is the HTTP status
  - ``BadRequest`` (400): a malformed or truncated upload, a Content-Length mismatch
  - ``Unauthorized`` (401): no token, or an unknown one
  - ``Forbidden`` (403): a token of the wrong kind for the route
  - ``NotFound`` (404): missing, or owned by someone else (never 403, so ids don't leak)
  - ``Conflict`` (409)
    - ``StaleAttempt`` (409, ``stale_attempt``): a write from an attempt that is not the job's live one
  - ``Gone`` (410, ``worker_superseded``): a newer registration with the same worker token took over
  - ``LengthRequired`` (411)
  - ``PayloadTooLarge`` (413): a bundle over ``MAX_BUNDLE_MB``, an artifact or log post over its quota
  - ``InvalidRequest`` (422): the submission is wrong; ``fields`` lists every problem at once
  - ``ServiceUnavailable`` (503, with ``Retry-After``): Redis or the database is unreachable or saturated for
    now; nothing was changed, send the same request again later
"""

from __future__ import annotations

from typing import Any

from contract.errors import ErrorCode, error_body


class SchedulerError(Exception):
    status: int = 400
    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(
        self, message: str, *, code: ErrorCode | None = None, fields: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.fields = fields or {}

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.fields)


class BadRequest(SchedulerError):
    status = 400
    code = ErrorCode.BAD_REQUEST


class Unauthorized(SchedulerError):
    status = 401
    code = ErrorCode.UNAUTHORIZED


class Forbidden(SchedulerError):
    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(SchedulerError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(SchedulerError):
    status = 409
    code = ErrorCode.CONFLICT


class StaleAttempt(Conflict):
    code = ErrorCode.STALE_ATTEMPT


class Gone(SchedulerError):
    status = 410
    code = ErrorCode.WORKER_SUPERSEDED


class LengthRequired(SchedulerError):
    status = 411
    code = ErrorCode.LENGTH_REQUIRED


class PayloadTooLarge(SchedulerError):
    status = 413
    code = ErrorCode.PAYLOAD_TOO_LARGE


class InvalidRequest(SchedulerError):
    status = 422
    code = ErrorCode.INVALID_REQUEST


class ServiceUnavailable(SchedulerError):
    status = 503
    code = ErrorCode.SERVICE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: int = 2, code: ErrorCode | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
