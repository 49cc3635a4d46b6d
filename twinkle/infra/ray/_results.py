"""Reading what Ray actors return: wait for every worker, fail as soon as one fails, translate Ray's errors.

Used by lazy results, the call queue and the proxy; knows nothing of any of them.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twinkle.infra.ray._errors import RemoteCallError
from twinkle.infra.ray._worker import CallFailed

# While waiting for a call, how often the workers that already finished are checked for a failure (the others may
# be stuck in a collective with the one that failed, and would never finish).
FAILURE_CHECK_S = 0.25


def raise_remote(exc: BaseException, label: str) -> None:
    """Raise ``exc`` (from ``ray.get``) as the :class:`RemoteCallError` a user can read."""
    import ray

    if isinstance(exc, RemoteCallError) and not isinstance(exc, ray.exceptions.RayError):
        raise exc
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RemoteCallError):
        raise cause from cause.cause
    if isinstance(exc, ray.exceptions.RayActorError):
        raise RemoteCallError(
            f"{label}: its Ray worker died ({type(exc).__name__}: {exc}); look at the worker's log above for the "
            f"reason (out of memory, a crash in native code)",
            method=label,
        ) from None
    raise RemoteCallError(f"{label} failed: {type(exc).__name__}: {exc}", method=label) from None


def get_fail_fast(refs: list[Any], label: str) -> list[Any]:
    """``ray.get`` every ref, but raise as soon as any one fails (its peers may be stuck in a collective).

    One blocking wait for all of them in the common case: each wake-up of a waiting driver costs CPU that the
    workers on the same machine would rather have. A failure is told to ``initialize(notifier=...)``'s notifier
    (once per distinct error) before it is raised.
    """
    try:
        return _get_fail_fast(refs, label)
    except RemoteCallError as exc:
        from twinkle.infra import _state
        from twinkle.notifier import notify_exception

        notify_exception(_state.get_notifier(), f"remote call {label} failed", exc, name=_state.get_name())
        raise


def _get_fail_fast(refs: list[Any], label: str) -> list[Any]:
    import ray

    if not refs:
        return []
    pending, wait_s = list(refs), 0.0
    while True:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=wait_s)
        if not pending:
            break
        for ref in ready:
            raise_if_failed(ref, pending, label)
        wait_s = FAILURE_CHECK_S
    try:
        values = ray.get(refs)  # one round trip for all of them
    except Exception:  # find the one that failed, for its own message
        for ref in refs:
            raise_if_failed(ref, [], label)
        raise
    for value in values:
        if isinstance(value, CallFailed):
            raise value.error from value.error.cause
    return values


def raise_if_failed(ref: Any, peers: list[Any], label: str) -> None:
    import ray

    try:
        value = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - translated into a RemoteCallError
        settle_quietly(peers)
        raise_remote(exc, label)
    if isinstance(value, CallFailed):
        settle_quietly(peers)
        raise value.error from value.error.cause


def settle_quietly(refs: list[Any], timeout: float = 1.0) -> None:
    """Read the peers of a failed call that finish soon, so Ray does not log their (same) error as unhandled."""
    import ray

    if not refs:
        return
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in ready:
        with contextlib.suppress(Exception):  # the first failure is the one reported
            ray.get(ref)
