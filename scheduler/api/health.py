from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from contract import routes
from scheduler.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get(routes.HEALTHZ)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(routes.READYZ)
def readyz(rt: RuntimeDep) -> JSONResponse:
    """Ready when the database and Redis answer (503 otherwise, naming what failed)."""
    checks: dict[str, str] = {}
    try:
        rt.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        rt.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {exc.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@router.get(routes.METRICS)
def metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by state, queue depth, live workers, dispatch latency."""
    body = generate_latest(request.app.state.metrics_registry) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
