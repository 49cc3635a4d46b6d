"""Request dependencies as ``Annotated`` aliases: the runtime, a DB session, and who is calling.

Authentication opens its own short session in a thread of the caller's lane (``Runtime.in_session``) and
closes it before the route runs, so the connection is never held while the request body uploads or while the
route waits for a thread. Worker routes authenticate in the worker lane (``CurrentWorker``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import SecretStr
from sqlalchemy.orm import Session

from contract.errors import ErrorCode
from scheduler.db import ApiTokenModel, UserModel
from scheduler.errors import Forbidden, Unauthorized
from scheduler.runtime import Lane, Runtime
from scheduler.services import users as users_service
from scheduler.services.users import SESSION_COOKIE, Principal


# Dependencies that do no I/O are ``async def``: a sync one would cost a trip through the thread pool.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]



def _plain(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


async def get_session(rt: RuntimeDep) -> AsyncIterator[Session]:
    """A session for the few low-traffic sync routes. Creating one connects nothing; the route's first query
    checks a connection out. Closing goes to a thread only while a transaction is still open."""
    session = rt.db.sessionmaker()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]

# Ids in paths: any printable text up to 128 characters (unknown ones are 404), never control characters, which
# PostgreSQL refuses in a query parameter (a NUL would otherwise be a 500).
_ID = r"^[^\x00-\x1f\x7f]{1,128}$"
JobIdPath = Annotated[str, Path(pattern=_ID, description="a job id")]
WorkerIdPath = Annotated[str, Path(pattern=_ID, description="a worker id")]
AttemptPath = Annotated[int, Path(ge=1, le=1_000_000, description="the attempt number, 1-based")]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _check_same_origin(request: Request, public_url: str | None) -> None:
    """A request authenticated by the session cookie that changes something must come from our own pages: its
    ``Origin`` (or ``Referer``) names this server. Browsers always send one on such requests; a page of another
    site riding on the cookie (CSRF) cannot make it ours."""
    if request.method in _SAFE_METHODS:
        return
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    parsed = urlsplit(source)
    ours = {request.headers.get("host", "")}
    if public_url:
        ours.add(urlsplit(public_url).netloc)
    if not parsed.scheme or parsed.netloc not in ours:
        raise Forbidden(
            "a cookie-authenticated request that changes something must come from this server's own pages "
            "(its Origin header did not match); scripts should send 'Authorization: Bearer <token>' instead",
            code=ErrorCode.CROSS_ORIGIN,
        )


def _credentials(request: Request) -> tuple[str, str]:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        return "token", token.strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return "cookie", cookie
    raise Unauthorized(
        "no credentials: send 'Authorization: Bearer <token>' (twinkle-submit reads ~/.config/twinkle/config.toml)"
    )


class AuthCache:
    """Known tokens for ``ttl_s`` seconds, so a busy client costs no database round trip per request.

    Keyed by the token's SHA-256 (the raw token is never kept); only successful look-ups are cached, and at
    most ``max_entries`` (a flood of made-up tokens cannot grow it). A revocation clears this process's cache
    (``forget_cached_tokens``); in another API process a revoked token still passes this check for at most
    ``AUTH_CACHE_S``, but heartbeats and claims read the token's row every time, so a revoked worker gets no
    assignment and no lease at its next call, and its jobs are requeued at once."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key: str) -> Principal | None:
        hit = self._entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def clear(self) -> None:
        self._entries.clear()

    def put(self, key: str, p: Principal) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl_s, p)


def _auth_cache(rt: Runtime) -> AuthCache:
    cache = rt.__dict__.get("_auth_cache")
    if cache is None:
        cache = rt.__dict__["_auth_cache"] = AuthCache(rt.settings.auth_cache_s)
    return cache


def forget_cached_tokens(rt: Runtime) -> None:
    """Drop every cached token check (after a revocation)."""
    _auth_cache(rt).clear()


async def _principal(request: Request, rt: Runtime, lane: Lane) -> Principal:
    kind, value = _credentials(request)
    s = rt.settings
    if kind == "cookie":
        _check_same_origin(request, s.public_url)
    cache = _auth_cache(rt)
    key = f"{kind}:{users_service.hash_token(value)}"
    hit = cache.get(key)
    if hit is not None:
        return hit
    if kind == "token":
        p = await rt.in_session(users_service.authenticate, value, _plain(s.admin_token), lane=lane, readonly=True)
    else:
        token_id = users_service.unsign_session(s.secret_key.get_secret_value(), value)
        p = await rt.in_session(users_service.principal_from_token_id, token_id, lane=lane, readonly=True)
    cache.put(key, p)
    return p


async def get_principal(request: Request, rt: RuntimeDep) -> Principal:
    return await _principal(request, rt, "user")


async def get_worker_principal(request: Request, rt: RuntimeDep) -> Principal:
    return await _principal(request, rt, "worker")


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_current_user(p: PrincipalDep) -> UserModel:
    return users_service.require_user(p)


CurrentUser = Annotated[UserModel, Depends(get_current_user)]


async def get_current_worker(p: Annotated[Principal, Depends(get_worker_principal)]) -> ApiTokenModel:
    return users_service.require_worker(p)


CurrentWorker = Annotated[ApiTokenModel, Depends(get_current_worker)]


async def get_admin(p: PrincipalDep) -> None:
    users_service.require_admin(p)


AdminDep = Annotated[None, Depends(get_admin)]
