from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from contract import routes
from contract.errors import ErrorCode
from scheduler.api.deps import RuntimeDep
from scheduler.errors import Unauthorized
from scheduler.runtime import Runtime

router = APIRouter(tags=["health"])


@router.get(routes.HEALTHZ)
async def healthz() -> dict[str, str]:
    """The process is up. Answered on the event loop itself: no thread, no database, so no user load delays it."""
    return {"status": "ok"}


def _checks(rt: Runtime) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        rt.worker_db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        rt.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {exc.__class__.__name__}"
    return checks


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> JSONResponse:
    """Ready when the database and Redis answer (503 otherwise, naming what failed). Checked in the worker
    lane, beside heartbeats: the dispatcher reads it before it lets any lease expire."""
    checks = await rt.run(_checks, rt, lane="worker")
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@router.get(routes.METRICS)
def metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by state, queue depth, live workers, dispatch latency. With ``METRICS_TOKEN`` set,
    only ``Authorization: Bearer <METRICS_TOKEN>`` reads them."""
    expected = request.app.state.runtime.settings.metrics_token
    if expected is not None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise Unauthorized(
                "GET /metrics needs 'Authorization: Bearer <TWINKLE_SCHEDULER_METRICS_TOKEN>'",
                code=ErrorCode.METRICS_TOKEN_REQUIRED,
            )
    body = generate_latest(request.app.state.metrics_registry) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
