"""HTTP errors of the server and the one mapping from exceptions to status codes.

Bad input is always a 4xx with a message that says what to do; a 500 means a bug on our side. Tasks run on the
compute worker raise plain twinkle exceptions; ``http_status`` decides their status here, in one place.
"""

from __future__ import annotations

from twinkle.errors import (
    AdapterError,
    CheckpointError,
    InputTooLongError,
    OptimizerNotSetError,
    SlotsExhaustedError,
    TwinkleError,
)

__all__ = ["LimitError", "NotFound", "UserError", "http_status"]


class UserError(Exception):
    """A request the caller must change; ``status`` is the HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class NotFound(UserError):
    def __init__(self, detail: str) -> None:
        super().__init__(404, detail)


class LimitError(UserError):
    def __init__(self, detail: str) -> None:
        super().__init__(429, detail)


def http_status(exc: BaseException) -> int:
    if isinstance(exc, UserError):
        return exc.status
    if isinstance(exc, SlotsExhaustedError):
        return 429
    if isinstance(exc, InputTooLongError):
        return 413
    if isinstance(exc, AdapterError) and "not found" in str(exc):
        return 404
    if isinstance(exc, CheckpointError):
        return 400
    if isinstance(exc, OptimizerNotSetError):
        return 409
    if isinstance(exc, (TwinkleError, ValueError, TypeError, KeyError, IndexError)):
        # a loss or input the tenant sent that the model cannot use (wrong keys, shapes, kwargs)
        return 400
    return 500
