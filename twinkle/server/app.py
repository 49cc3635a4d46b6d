"""The FastAPI application: thin routers over ``ModelService`` / ``SamplerService`` and the in-memory state.

One process serves every application of the config (gateway, each model, each sampler). See
docs/architecture.md ("HTTP mode") for why this is one FastAPI process per base model and not Ray Serve.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse

from twinkle.server.checkpoints import CheckpointStore, check_name, make_storage
from twinkle.server.config import ServerArgs, ServerConfig
from twinkle.server.errors import NotFound, UserError, http_status
from twinkle.server.processors import ProcessorService
from twinkle.server.services import ModelService, SamplerService, to_jsonable
from twinkle.server.settings import ServerSettings
from twinkle.server.state import FutureStore, Registry, Sessions, tenant_of
from twinkle.server.tinker import long_poll, tinker_router

__all__ = ["Server", "build_app"]

ASYNC = "respond-async"


@dataclass
class Caller:
    tenant: str
    session_id: str | None
    respond_async: bool


async def caller(  # async: a plain def dependency would cost every call a hop through the thread pool
    request: Request,
    twinkle_authorization: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    x_request_id: Annotated[str | None, Header()] = None,
    x_twinkle_session_id: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header()] = None,
) -> Caller:
    raw = twinkle_authorization or authorization or x_api_key or ""
    token = raw[7:].strip() if raw.lower().startswith("bearer ") else raw.strip()
    if not token:
        raise UserError(401, "no API key: send 'Authorization: Bearer <key>' (init_twinkle_client(api_key=...))")
    if not x_request_id:
        raise UserError(400, "Missing x-request-id header, send one id per client process (twinkle_client "
                             "does this for you)")
    salt = request.app.state.server.settings.token_salt
    return Caller(tenant_of(token, salt), x_twinkle_session_id, ASYNC in (prefer or ""))


CallerDep = Annotated[Caller, Depends(caller)]


class Server:
    """Everything one server process holds: state, storage, and a service per model/sampler application."""

    def __init__(self, config: ServerConfig, settings: ServerSettings | None = None) -> None:
        self.config = config
        self.settings = settings or ServerSettings()
        self.sessions, self.registry, self.futures = Sessions(), Registry(), FutureStore()
        s = self.settings
        storage = make_storage(s.default_save_dir, s.s3_bucket, endpoint_url=s.s3_endpoint_url, region=s.s3_region,
                               access_key_id=s.s3_access_key_id, secret_access_key=s.s3_secret_access_key)
        import os
        import tempfile

        cache = s.cache_dir or os.path.join(tempfile.gettempdir(), f"twinkle-server-cache-{os.getpid()}")
        self.checkpoints = CheckpointStore(storage, cache)
        gateways = [a for a in config.applications if a.import_path == "server"]
        self.server_args: ServerArgs = gateways[0].typed_args() if gateways else ServerArgs()
        self.gateway_prefix = gateways[0].route_prefix if gateways else "/api/v1"
        self.models: dict[str, tuple[str, ModelService]] = {}  # name -> (route prefix, service)
        self.samplers: dict[str, tuple[str, SamplerService]] = {}
        limit = self.server_args.server_config.per_token_model_limit
        for app in config.applications:
            if app.import_path == "model":
                name = _model_name(app.route_prefix, app.name)
                self.models[name] = (app.route_prefix, ModelService(
                    name, app.typed_args(), sessions=self.sessions, registry=self.registry, futures=self.futures,
                    checkpoints=self.checkpoints, per_token_limit=limit))
        for app in config.applications:
            if app.import_path == "sampler":
                name = _model_name(app.route_prefix, app.name)
                model = self.models.get(name, (None, None))[1]
                self.samplers[name] = (app.route_prefix, SamplerService(
                    name, app.typed_args(), sessions=self.sessions, registry=self.registry, futures=self.futures,
                    checkpoints=self.checkpoints, model=model))
        self.supported = self.server_args.model_names() or list(self.models)
        processor_apps = [a for a in config.applications if a.import_path == "processor"]
        self.processor_prefix = processor_apps[0].route_prefix if processor_apps else None
        self.processors = ProcessorService(
            self.sessions, {name: service.args.model_id for name, (_, service) in self.models.items()},
            per_tenant_limit=self.settings.per_user_processor_limit, timeout=self.settings.processor_timeout)
        self.started = time.time()
        self._stop = threading.Event()
        threading.Thread(target=self._cleanup_loop, daemon=True, name="twinkle-cleanup").start()

    def _cleanup_loop(self) -> None:
        # sessions silent for expiration_timeout go (their adapters follow at the next adapter sweep); futures
        # not updated for as long go too
        cfg = self.server_args.server_config
        while not self._stop.wait(cfg.cleanup_interval):
            self.sessions.expire(cfg.expiration_timeout)
            self.futures.expire(cfg.expiration_timeout)

    def stop(self) -> None:
        self._stop.set()
        for _, model in self.models.values():
            model.stop()
        for _, sampler in self.samplers.values():
            sampler.stop()


def _model_name(route_prefix: str, fallback: str) -> str:
    for marker in ("/model/", "/sampler/"):
        if marker in route_prefix:
            return route_prefix.split(marker, 1)[1]
    return fallback


def build_app(config: ServerConfig, settings: ServerSettings | None = None) -> FastAPI:
    server = Server(config, settings)
    app = FastAPI(title="twinkle-server", version="0.1.0")
    app.state.server = server

    @app.exception_handler(UserError)
    async def _user_error(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.on_event("shutdown")
    def _stop() -> None:
        server.stop()

    app.include_router(_gateway_router(server), prefix=server.gateway_prefix)
    app.include_router(tinker_router(server), prefix=server.gateway_prefix)

    # ---------------------------------------------------------------- models
    for prefix, service in server.models.values():
        app.include_router(_model_router(service, answer), prefix=prefix)
    for prefix, sampler in server.samplers.values():
        app.include_router(_sampler_router(sampler, answer), prefix=prefix)
    if server.processor_prefix is not None:
        app.include_router(_processor_router(server.processors), prefix=server.processor_prefix)
    return app


async def answer(who: Caller, submitted: Any) -> Any:
    """Wait for a queued call (or hand out its future id under ``Prefer: respond-async``); errors -> status."""
    request_id, future = submitted
    if who.respond_async:
        return JSONResponse({"request_id": request_id}, status_code=202)
    try:
        return await asyncio.wrap_future(future)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
        status = http_status(exc)
        detail = str(exc) if status < 500 else f"internal error ({type(exc).__name__}: {exc}); " \
                                               f"request {request_id}, see the server log"
        return JSONResponse({"detail": detail}, status_code=status)


def _gateway_router(server: Server) -> APIRouter:
    gw = APIRouter()

    @gw.get("/twinkle/healthz")
    @gw.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @gw.get("/twinkle/get_server_capabilities")
    @gw.get("/get_server_capabilities")
    def capabilities() -> dict[str, Any]:
        return {"supported_models": [{"model_name": n} for n in server.supported]}

    @gw.get("/twinkle/capacity_info")
    def capacity(who: CallerDep) -> dict[str, int]:
        total = {"max_loras": 0, "used_loras": 0, "free_loras": 0}
        for _, service in server.models.values():
            for key, value in service.capacity().items():
                total[key] += value
        return total

    @gw.get("/twinkle/status")
    def status(who: CallerDep) -> dict[str, Any]:
        cfg = server.server_args.server_config
        return {"resources": {"counts": {"sessions": server.sessions.count(), "models": len(server.registry.all()),
                                         "futures": server.futures.count()}},
                "cleanup": {"running": True, "expiration_timeout": cfg.expiration_timeout}}

    @gw.post("/twinkle/create_session")
    async def create_session(who: CallerDep, body: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, str]:
        session = server.sessions.create(who.tenant, (body or {}).get("metadata"))
        return {"session_id": session.session_id}

    @gw.post("/twinkle/session_heartbeat")
    async def heartbeat(body: Annotated[dict[str, Any], Body()], who: CallerDep) -> dict[str, Any]:
        if not server.sessions.touch(str(body.get("session_id", "")), who.tenant):
            raise NotFound("Unknown session: it expired or the server restarted; create a new session and load "
                           "your last checkpoint")
        return {}

    @gw.post("/twinkle/retrieve_future")
    async def retrieve_future(who: CallerDep, body: Annotated[dict[str, Any], Body()]) -> Any:
        return await long_poll(server, who.tenant, body)

    _add_run_routes(gw, server)
    return gw


def _add_run_routes(gw: APIRouter, server: Server) -> None:
    """Training runs and checkpoints of the caller's tenant."""

    @gw.get("/twinkle/training_runs")
    def training_runs(who: CallerDep, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        runs = server.checkpoints.list_runs(who.tenant)
        return {"training_runs": runs[offset:offset + limit],
                "cursor": {"limit": limit, "offset": offset, "total_count": len(runs)}}

    @gw.get("/twinkle/training_runs/{run}")
    def training_run(run: str, who: CallerDep) -> dict[str, Any]:
        return server.checkpoints.read_run(who.tenant, run)

    @gw.get("/twinkle/training_runs/{run}/checkpoints")
    def checkpoints(run: str, who: CallerDep) -> dict[str, Any]:
        return {"checkpoints": server.checkpoints.list(who.tenant, run), "cursor": None}

    @gw.delete("/twinkle/training_runs/{run}/checkpoints/{ckpt:path}")
    def delete_checkpoint(run: str, ckpt: str, who: CallerDep) -> dict[str, Any]:
        server.checkpoints.delete(who.tenant, run, ckpt)
        return {"success": True, "message": f"deleted {ckpt} of {run}"}

    @gw.get("/twinkle/checkpoint_path/{run}/{ckpt:path}")
    def checkpoint_path(run: str, ckpt: str, who: CallerDep) -> dict[str, Any]:
        meta = server.checkpoints.metadata(who.tenant, f"twinkle://{run}/{ckpt}")
        return {"path": meta["twinkle_path"], "twinkle_path": meta["twinkle_path"]}

    @gw.post("/twinkle/weights_info")
    def weights_info(body: Annotated[dict[str, Any], Body()], who: CallerDep) -> dict[str, Any]:
        meta = server.checkpoints.metadata(who.tenant, str(body.get("twinkle_path", "")))
        return {"training_run_id": meta["twinkle_path"].split("/")[2], "base_model": meta.get("base_model"),
                "model_owner": who.tenant, "is_lora": True, "lora_rank": meta.get("lora_rank")}


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise UserError(400, f"the body is not JSON ({exc}); send a JSON object") from exc
    if not isinstance(body, dict):
        raise UserError(400, "the body must be a JSON object of keyword arguments")
    return body


def _model_router(service: ModelService, answer) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"healthy": True, "detail": f"{service.capacity()['free_loras']} free LoRA slots"}

    @router.post("/twinkle/create")
    def create(who: CallerDep) -> dict[str, str]:
        return {"status": "ok"}

    @router.post("/twinkle/{op}")
    async def call(op: str, who: CallerDep, request: Request) -> Any:
        # the raw JSON, not a validated Body(): pydantic would walk every token id of every batch
        body = await _json_object(request)
        short = str(body.pop("adapter_name", "") or "default")  # the clients' default name
        if op == "add_adapter_to_model":
            if "config" not in body:
                raise UserError(400, "add_adapter_to_model needs config (a LoraConfig)")
            config = body.pop("config")
            return await answer(who, service.add_adapter(short, who.session_id, who.tenant, config, body))
        record = service.owned(short, who.session_id, who.tenant)
        if op == "remove_adapter":
            service.remove_adapter(record.name)
            return None
        if op == "save":
            name, save_optimizer = body.pop("name", None), bool(body.pop("save_optimizer", False))
            return await answer(who, service.save(record, name, save_optimizer, bool(body.pop("is_sampler", False)),
                                                  body))
        if op in ("load", "resume_from_checkpoint"):
            uri = body.get("name") or body.get("checkpoint_dir") or ""
            result = await answer(who, service.load(record, str(uri), bool(body.get("load_optimizer", False)),
                                                    resume=op == "resume_from_checkpoint"))
            return {"result": result} if op == "resume_from_checkpoint" and not hasattr(result, "status_code") \
                else result
        result = await answer(who, service.call(op, record, body))
        if hasattr(result, "status_code"):
            return result
        # already plain JSON types: skip FastAPI's encoder, which walks every float of a logps list
        return JSONResponse(None if result is None else {"result": result})

    return router


def _sampler_router(service: SamplerService, answer) -> APIRouter:
    router = APIRouter()

    @router.post("/twinkle/create")
    def create(who: CallerDep) -> dict[str, str]:
        return {"status": "ok"}

    @router.post("/twinkle/set_template")
    async def set_template(body: Annotated[dict[str, Any], Body()], who: CallerDep) -> Any:
        body = dict(body)
        body.pop("adapter_name", None)
        template = str(body.pop("template_cls", "Template"))
        result = await answer(who, service.set_template(template, body))
        return result if hasattr(result, "status_code") else {"status": "ok"}

    @router.post("/twinkle/sample")
    async def sample(body: Annotated[dict[str, Any], Body()], who: CallerDep) -> Any:
        if "inputs" not in body:
            raise UserError(400, "sample needs inputs (InputFeatures with input_ids, or Trajectories)")
        short = str(body.get("adapter_name") or "")
        if short:
            check_name(short, "adapter_name")
        return await answer(who, service.sample(who.tenant, who.session_id, body["inputs"],
                                                body.get("sampling_params"), short, body.get("adapter_uri")))

    return router


_EXHAUSTED = object()


def _processor_router(service: ProcessorService) -> APIRouter:
    """http.md §7: server-side data objects; no compute queue (they run on threads, one call per object)."""
    router = APIRouter()

    async def run(fn) -> Any:
        def guarded() -> Any:
            try:
                return fn()
            except StopIteration:  # cannot cross a future: turned into 410 below
                return _EXHAUSTED

        try:
            result = await asyncio.to_thread(guarded)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
            status = http_status(exc)
            detail = str(exc) if status < 500 else f"internal error ({type(exc).__name__}: {exc}); see the server log"
            return JSONResponse({"detail": detail}, status_code=status)
        if result is _EXHAUSTED:
            return JSONResponse({"detail": "Iterator exhausted"}, status_code=410)
        return result

    @router.post("/twinkle/create")
    async def create(who: CallerDep, request: Request) -> Any:
        body = await _json_object(request)
        ptype, ctype = body.pop("processor_type", None), body.pop("class_type", None)
        if not ptype or not ctype:
            raise UserError(400, "create needs processor_type (e.g. 'dataset') and class_type (e.g. 'Dataset')")
        result = await run(lambda: service.create(who.tenant, who.session_id, str(ptype), str(ctype), body))
        return result if isinstance(result, JSONResponse) else {"processor_id": result}

    @router.post("/twinkle/call")
    async def call(who: CallerDep, request: Request) -> Any:
        body = await _json_object(request)
        pid, function = body.pop("processor_id", None), body.pop("function", None)
        if not pid or not function:
            raise UserError(400, "call needs processor_id and function")
        result = await run(lambda: to_jsonable(service.call(who.tenant, str(pid), str(function), body)))
        if isinstance(result, JSONResponse):
            return result
        try:
            return JSONResponse({"result": result})
        except (TypeError, ValueError):
            raise UserError(400, f"{function} returned a {type(result).__name__}, which cannot be sent; call "
                                 f"methods that return data") from None

    return router
