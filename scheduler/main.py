"""The FastAPI app: routers under ``/api/v1``, health at the root, errors mapped to JSON in one place."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.errors import ErrorCode, error_body
from contract.routes import API_PREFIX
from scheduler.errors import SchedulerError, ServiceUnavailable
from scheduler.observability import app_registry
from scheduler.runtime import Runtime
from scheduler.settings import Settings, get_settings

log = logging.getLogger(__name__)

def _error(status: int, code: ErrorCode, message: str, fields: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, fields), status_code=status)


def _unavailable(what: str, code: ErrorCode, exc: Exception, retry_after_s: int = 2) -> JSONResponse:
    log.warning("%s unavailable: %s: %s", what, exc.__class__.__name__, str(exc)[:200])
    err = ServiceUnavailable(
        f"{what} is unavailable right now ({exc.__class__.__name__}); nothing was changed, send the request "
        f"again in {retry_after_s}s",
        retry_after_s=retry_after_s,
        code=code,
    )
    return JSONResponse(err.to_dict(), status_code=503, headers={"Retry-After": str(retry_after_s)})


def install_error_handlers(app: FastAPI) -> None:
    import redis
    import sqlalchemy.exc as sa_exc

    @app.exception_handler(SchedulerError)
    async def _scheduler_error(_req: Request, exc: SchedulerError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ServiceUnavailable) else None
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

    # Outages and saturation are retryable, not server bugs: 503 + Retry-After, which the worker and the CLI
    # retry with backoff. (A pool that stays exhausted for DB_POOL_TIMEOUT_S lands here too.)
    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    @app.exception_handler(redis.exceptions.BusyLoadingError)
    async def _redis_down(_req: Request, exc: Exception) -> JSONResponse:
        return _unavailable("Redis (live logs)", ErrorCode.REDIS_UNAVAILABLE, exc)

    @app.exception_handler(sa_exc.TimeoutError)
    async def _pool_exhausted(_req: Request, exc: Exception) -> JSONResponse:
        return _unavailable("the database connection pool", ErrorCode.DATABASE_BUSY, exc, retry_after_s=1)

    @app.exception_handler(sa_exc.OperationalError)
    @app.exception_handler(sa_exc.InterfaceError)
    async def _db_down(_req: Request, exc: Exception) -> JSONResponse:
        return _unavailable("the database", ErrorCode.DATABASE_UNAVAILABLE, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, str] = {}
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
            fields[loc or "body"] = err.get("msg", "invalid")
        summary = "; ".join(f"{k}: {v}" for k, v in fields.items())
        return _error(422, ErrorCode.INVALID_REQUEST, f"the request is invalid: {summary}", fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> Response:
        # a browser asking for a page that does not exist gets the web UI's "not found" page, not JSON
        not_found_page = getattr(app.state, "not_found_page", None)
        if exc.status_code == 404 and not_found_page is not None and _wants_a_page(req):
            page: Response = not_found_page()
            return page
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code, ErrorCode.HTTP_ERROR)
        return _error(exc.status_code, code, str(exc.detail))


def _wants_a_page(req: Request) -> bool:
    """A browser navigation (GET, Accept: text/html) outside the API and the health and metrics routes."""
    path = req.url.path
    outside = not path.startswith((API_PREFIX + "/", "/ui/", "/docs/assets/")) and path not in (
        API_PREFIX, "/healthz", "/readyz", "/metrics", "/openapi.json")
    return req.method in ("GET", "HEAD") and outside and "text/html" in req.headers.get("accept", "")


class NoSniff:
    """Every answer says ``X-Content-Type-Options: nosniff``, so a browser never reads a log or an artifact as a
    page. Plain ASGI (not BaseHTTPMiddleware), so streamed answers (logs, SSE, downloads) stay streamed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, send_with_header)


class JsonBodyLimit:
    """A JSON request body over ``max_bytes`` is refused with 413 ``quota_exceeded`` before it is read (by its
    ``Content-Length``); one sent without a length is cut off at ``max_bytes``, so it never fills memory (and
    then fails to parse: 400/422). Uploads (multipart bundles, raw artifacts) have limits of their own."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if b"json" not in headers.get(b"content-type", b""):
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            limit_mb = self.max_bytes / 1024 / 1024
            response = _error(
                413, ErrorCode.QUOTA_EXCEEDED,
                f"the JSON body ({int(length)} bytes) is over MAX_JSON_BODY_MB = {limit_mb:g} MiB "
                "(TWINKLE_SCHEDULER_MAX_JSON_BODY_MB); send it in smaller parts",
                {"limit": "MAX_JSON_BODY_MB", "max": f"{limit_mb:g}", "got": str(int(length))},
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        await self.app(scope, bounded, send)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the API. ``runtime`` (DB, storage, Redis) is made from ``settings`` when not given; the database
    is migrated to the latest schema first unless ``RUN_MIGRATIONS`` is off."""
    from scheduler.api import attempts, downloads, health, jobs, users, workers

    rt = runtime or Runtime.from_settings(settings or get_settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        # Sync routes and streamed bodies share this limit; keep it within the pool (see Settings).
        anyio.to_thread.current_default_thread_limiter().total_tokens = rt.settings.api_threads
        yield
        if "waker" in rt.__dict__:
            await rt.waker.aclose()
        if runtime is None:
            rt.close()

    app = FastAPI(
        title="Twinkle Commons scheduler",
        version="0.1.0",
        description="Submit twinkle training scripts as jobs; donated GPU workers run them.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by scheduler.api_docs (works offline, strict CSP)
        redoc_url=None,
    )
    app.state.runtime = rt
    app.state.metrics_registry = app_registry(rt.db)
    install_error_handlers(app)
    app.add_middleware(JsonBodyLimit, max_bytes=int(rt.settings.max_json_body_mb * 1024 * 1024))
    app.add_middleware(NoSniff)
    for module in (users, jobs, workers, attempts, downloads):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(health.router)
    from scheduler.api_docs import mount_docs

    mount_docs(app)

    try:
        import webui
    except ImportError:  # pragma: no cover - webui ships in the same distribution
        webui = None  # type: ignore[assignment]
    if webui is not None and hasattr(webui, "mount"):
        webui.mount(app)
    return app
