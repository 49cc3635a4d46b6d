"""Tinker-compatible routes (http.md §4.1, §5.1) for the stock ``tinker`` SDK, unpatched: 0.16.1 (JSON bodies)
and 0.38 (``/client/config``, protobuf ``forward_backward`` and results, ``tinker_proto.py``).

Built: sessions, ``create_model`` (LoRA), ``get_info``, ``forward_backward`` / ``forward`` with ``cross_entropy``
or ``importance_sampling`` (clipped GRPO, §10.4), ``optim_step`` (``AdamParams``), ``save_weights`` /
``load_weights``, ``save_weights_for_sampler``, ``create_sampling_session``, ``GET /samplers/{id}``, ``asample``,
the REST listings of runs and checkpoints, and ``retrieve_future``. Calls return a future at once and run on the
model's (or sampler's) compute queue, in arrival order per model; ``retrieve_future`` long-polls. Not built: other
losses, DPO, ``unload_model``, and 0.38's newer endpoints (docs/http-mode.md). Checkpoint URIs are handed out as
``tinker://...`` (the unpatched SDK insists on that scheme) and accepted with either scheme.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import Response

from twinkle.server.errors import NotFound, UserError
from twinkle.server.state import AdapterRecord, tenant_of
from twinkle.server.tinker_proto import (
    CONTENT_TYPE,
    ProtoError,
    decode_forward_backward_request,
    encode_forward_backward_output,
    encode_sample_response,
)

if TYPE_CHECKING:
    from twinkle.server.app import Server
    from twinkle.server.services import ModelService

__all__ = ["tinker_router"]


async def tinker_tenant(  # async: a plain def dependency would cost every call a thread-pool hop
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    """The tenant of an SDK call: ``X-API-Key`` (all the unpatched SDK sends) or ``Authorization: Bearer``."""
    raw = x_api_key or authorization or ""
    token = raw[7:].strip() if raw.lower().startswith("bearer ") else raw.strip()
    if not token:
        raise UserError(401, "no API key: pass api_key= to tinker.ServiceClient (or set TINKER_API_KEY)")
    return tenant_of(token, request.app.state.server.settings.token_salt)


TenantDep = Annotated[str, Depends(tinker_tenant)]


def to_twinkle_uri(path: str) -> str:
    return "twinkle://" + path[len("tinker://"):] if path.startswith("tinker://") else path


def to_tinker_uri(path: str) -> str:
    return "tinker://" + path[len("twinkle://"):] if path.startswith("twinkle://") else path


def datum_to_row(datum: dict[str, Any]) -> tuple[dict[str, Any], list[float]]:
    """http.md §10.3: tokens -> input_ids; target_tokens where weight != 0 -> labels (aligned, not shifted)."""
    try:
        ids = [int(t) for chunk in datum["model_input"]["chunks"] for t in chunk["tokens"]]
        inputs = datum["loss_fn_inputs"]
        targets = [int(t) for t in inputs["target_tokens"]["data"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(400, f"bad Datum: needs model_input.chunks[].tokens and loss_fn_inputs.target_tokens "
                             f"({exc})") from exc
    weights = [float(w) for w in inputs["weights"]["data"]] if "weights" in inputs else \
        [1.0 if t != 0 else 0.0 for t in targets]
    if not (len(ids) == len(targets) == len(weights)):
        raise UserError(400, f"bad Datum: {len(ids)} tokens, {len(targets)} target_tokens, {len(weights)} weights; "
                             f"they must have the same length")
    labels = [t if w != 0 else -100 for t, w in zip(targets, weights, strict=True)]
    return {"input_ids": ids, "labels": labels}, weights


def rl_inputs(data: list[dict[str, Any]], pairs: list[tuple[dict[str, Any], list[float]]]) -> dict[str, Any]:
    """``advantages`` and ``logprobs`` (-> ``old_logps``) of each Datum as ``[batch, seq]`` tensors aligned with
    the labels, zero-padded on the right as the batch is."""
    import torch

    width = max(len(row["input_ids"]) for row, _ in pairs)

    def padded(name: str) -> Any:
        rows = []
        for datum, (row, _) in zip(data, pairs, strict=True):
            values = (datum.get("loss_fn_inputs") or {}).get(name)
            if values is None:
                return None
            values = [float(v) for v in values["data"]]
            if len(values) != len(row["input_ids"]):
                raise UserError(400, f"bad Datum: {name} has {len(values)} values for {len(row['input_ids'])} tokens")
            rows.append(values + [0.0] * (width - len(values)))
        return torch.tensor(rows)

    advantages = padded("advantages")
    if advantages is None:
        raise UserError(400, "importance_sampling needs loss_fn_inputs.advantages in every Datum")
    old = padded("logprobs")
    return {"advantages": advantages, **({"old_logps": old} if old is not None else {})}


def tinker_checkpoint(meta: dict[str, Any]) -> dict[str, Any]:
    """A stored checkpoint record in the SDK's ``Checkpoint`` shape (``tinker_path``)."""
    return {"checkpoint_id": meta["checkpoint_id"], "checkpoint_type": meta["checkpoint_type"], "time": meta["time"],
            "tinker_path": to_tinker_uri(meta["twinkle_path"]), "size_bytes": meta.get("size_bytes"),
            "public": bool(meta.get("public", False))}


def tinker_run(run: dict[str, Any]) -> dict[str, Any]:
    """A stored run record in the SDK's ``TrainingRun`` shape."""
    last, last_sampler = run.get("last_checkpoint"), run.get("last_sampler_checkpoint")
    return {
        "training_run_id": run["training_run_id"], "base_model": run.get("base_model", ""),
        "model_owner": run.get("model_owner", ""), "is_lora": True, "corrupted": bool(run.get("corrupted")),
        "lora_rank": run.get("lora_rank"), "last_request_time": run.get("last_request_time", 0),
        "last_checkpoint": tinker_checkpoint(last) if last else None,
        "last_sampler_checkpoint": tinker_checkpoint(last_sampler) if last_sampler else None,
        "user_metadata": {str(k): str(v) for k, v in (run.get("user_metadata") or {}).items()},
    }


def tinker_router(server: Server) -> APIRouter:  # noqa: C901 - one small closure per SDK route
    router = APIRouter()

    def model_of(model_id: str, tenant: str) -> tuple[ModelService, AdapterRecord]:
        for record in server.registry.all():
            if record.name == model_id and record.tenant == tenant and not record.expiring:
                return server.models[record.base_model][1], record
        raise NotFound(f"Model {model_id} not found")

    def future(submitted: tuple[str, Any], model_id: str | None = None) -> dict[str, Any]:
        request_id, _ = submitted
        return {"request_id": request_id, "model_id": model_id}

    @router.post("/create_session")
    async def create_session(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        session = server.sessions.create(tenant, {k: body.get(k) for k in ("tags", "user_metadata", "sdk_version")})
        return {"session_id": session.session_id, "type": "create_session"}

    @router.post("/session_heartbeat")
    async def heartbeat(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        if not server.sessions.touch(str(body.get("session_id", "")), tenant):
            raise NotFound("Unknown session")
        return {"type": "session_heartbeat"}

    @router.post("/client/config")
    async def client_config(tenant: TenantDep) -> dict[str, Any]:
        # SDK >= 0.38 asks for its feature flags before anything else. Ours: API keys only (no JWT exchange), plain
        # httpx transport, uncompressed protobuf forward_backward, one retrieve_future per request (no
        # retrieve_futures / join_sampling_session / server-side custom losses)
        return {"pjwt_auth_enabled": False, "credential_default_source": "api_key", "use_pyqwest_transport": False,
                "proto_compress_fwdbwd": False, "sample_use_retrieve_futures": False,
                "custom_loss_server_side": False, "sample_join_sampling_session": False}

    @router.post("/client/dynamic_config")
    async def client_dynamic_config(tenant: TenantDep) -> dict[str, Any]:
        return {"refresh_interval_sec": 3600, "sample_cancel_enabled": False}

    @router.post("/telemetry")
    def telemetry(body: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, str]:
        return {"status": "accepted"}  # discarded, as upstream

    @router.post("/create_model")
    def create_model(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        base = str(body.get("base_model", ""))
        if base not in server.models:
            raise UserError(400, f"base_model {base!r} is not served here; supported: {server.supported}")
        lora = body.get("lora_config")
        if not lora:
            raise UserError(400, "full fine-tuning is not offered: pass lora_config (create_lora_training_client)")
        session_id = str(body.get("session_id", ""))
        if server.sessions.get(session_id, tenant) is None:
            raise NotFound("Unknown session")
        service = server.models[base][1]
        model_id = re.sub(r"[^\w-]", "_", f"{time.strftime('%Y%m%d_%H%M%S')}-{base}-{uuid.uuid4().hex[:8]}")
        rank = int(lora.get("rank", 32))
        if rank > service.model.max_r:
            raise UserError(400, f"Too big rank for lora: {rank}; this server allows rank <= {service.model.max_r}")
        record = AdapterRecord(model_id, model_id, tenant, session_id, base, rank)
        server.registry.reserve(record, server.server_args.server_config.per_token_model_limit)

        def task() -> dict[str, Any]:
            from peft import LoraConfig

            config = LoraConfig(r=rank, lora_alpha=32, target_modules="all-linear")
            seed = lora.get("seed")
            service.model.add_adapter_to_model(model_id, config, init_seed=seed)
            service.model.set_optimizer("AdamW", adapter_name=model_id, lr=1e-4, weight_decay=0.0)
            service.checkpoints.write_run(tenant, model_id, {
                "base_model": base, "lora_rank": rank, "user_metadata": body.get("user_metadata") or {},
                **{k: bool(lora.get(k, True)) for k in ("train_unembed", "train_mlp", "train_attn")},
            })
            return {"model_id": model_id, "type": "create_model"}

        submitted = service.run(f"model:{model_id}", tenant, task)
        submitted[1].add_done_callback(lambda f: f.exception() is not None and server.registry.release(model_id))
        return future(submitted, model_id)

    @router.post("/get_info")
    async def get_info(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        model_id = str(body.get("model_id", ""))
        service, record = model_of(model_id, tenant)
        return {"type": "get_info", "model_data": {"arch": type(service.model.model).__name__,
                                                   "model_name": service.name, "tokenizer_id": service.args.model_id},
                "model_id": model_id, "is_lora": True, "lora_rank": record.rank, "model_name": service.name}

    async def read_forward_body(request: Request) -> dict[str, Any]:
        """The JSON body of SDK 0.16, or SDK 0.38's protobuf ``ForwardBackwardRequest`` in the same shape."""
        raw = await request.body()
        if CONTENT_TYPE not in request.headers.get("content-type", ""):
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                raise UserError(400, f"the body is not JSON ({exc})") from exc
            if not isinstance(body, dict):
                raise UserError(400, "the body must be a JSON object")
            return body
        if request.headers.get("content-encoding", "identity") != "identity":
            # /client/config tells the SDK not to compress (proto_compress_fwdbwd: false)
            raise UserError(415, f"Content-Encoding {request.headers['content-encoding']!r} is not accepted; "
                                 f"send the protobuf body uncompressed")
        try:
            return decode_forward_backward_request(raw)
        except ProtoError as exc:
            raise UserError(400, f"bad ForwardBackwardRequest protobuf: {exc}") from exc

    def submit_forward(tenant: str, body: dict[str, Any], key: str, forward_only: bool) -> dict[str, Any]:
        model_id = str(body.get("model_id", ""))
        service, _ = model_of(model_id, tenant)
        fb = body.get(key) or {}
        loss_fn = fb.get("loss_fn")
        if loss_fn not in ("cross_entropy", "importance_sampling"):
            raise UserError(400, f"loss_fn {loss_fn!r} is not offered yet; use 'cross_entropy' or "
                                 f"'importance_sampling'")
        try:
            config = {k: float(v) for k, v in (fb.get("loss_fn_config") or {}).items()}
        except (TypeError, ValueError) as exc:
            raise UserError(400, f"loss_fn_config values must be numbers for {loss_fn} ({exc})") from exc
        data = fb.get("data") or []
        if not data:
            raise UserError(400, "forward_backward needs at least one Datum")
        pairs = [datum_to_row(d) for d in data]
        rows = [row for row, _ in pairs]
        service.admission.admit(tenant, sum(len(r["input_ids"]) for r in rows))

        rl = rl_inputs(data, pairs) if loss_fn == "importance_sampling" else {}

        def task() -> dict[str, Any]:
            # the loss is chosen per call, as the SDK does: clipped GRPO for importance_sampling (http.md §10.4)
            if loss_fn == "importance_sampling":
                service.model.set_loss("GRPOLoss", adapter_name=model_id, epsilon=config.get("epsilon", 0.2),
                                       beta=config.get("beta", 0.0))
            else:
                service.model.set_loss("CrossEntropyLoss", adapter_name=model_id, reduction="sum")
            if forward_only:
                out = service.model.forward_only(inputs=rows, adapter_name=model_id)
                out["loss"] = service.model.calculate_loss(adapter_name=model_id, **rl)
            else:
                out = service.model.forward_backward(inputs=rows, adapter_name=model_id, **rl)
            logps = out["logps"].detach().float().cpu()
            outputs, tokens = [], 0.0
            for i, (row, weights) in enumerate(pairs):
                n = len(row["input_ids"])
                lp = logps[i, :n].tolist()
                tokens += sum(1 for w in weights if w != 0)
                outputs.append({
                    "logprobs": {"data": lp, "dtype": "float32", "shape": [n]},
                    "elementwise_loss": {"data": [-x * w for x, w in zip(lp, weights, strict=True)],
                                         "dtype": "float32", "shape": [n]},
                })
            # cross entropy is summed over tokens here; GRPO's loss is already a mean
            mean = float(out["loss"]) / max(1.0, tokens) if not rl else float(out["loss"])
            kind = "ImportanceSamplingLossReturn" if rl else "CrossEntropyLossReturn"
            return {"loss_fn_output_type": kind, "loss_fn_outputs": outputs,
                    # loss:avg is upstream's key, which the SDK's chunk merger drops (no 'avg' reduction);
                    # ours adds loss:mean (the same number) and loss:sum, which it keeps
                    "metrics": {"loss:avg": mean, "loss:mean": mean, "loss:sum": float(out["loss"])}}

        return future(service.run(f"model:{model_id}", tenant, task), model_id)

    @router.post("/forward_backward")
    async def forward_backward(tenant: TenantDep, request: Request) -> dict[str, Any]:
        body = await read_forward_body(request)
        return submit_forward(tenant, body, "forward_backward_input", bool(body.get("forward_only")))

    @router.post("/forward")
    async def forward(tenant: TenantDep, request: Request) -> dict[str, Any]:
        # SDK 0.16's forward(): JSON under forward_input (0.38 sends forward_backward with forward_only)
        return submit_forward(tenant, await read_forward_body(request), "forward_input", True)

    @router.post("/optim_step")
    async def optim_step(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        model_id = str(body.get("model_id", ""))
        service, _ = model_of(model_id, tenant)
        adam = body.get("adam_params") or {}

        def task() -> dict[str, Any]:
            group = service.model._group(model_id)
            if group.done.get("step") == group.cur_step or group.cur_step == 0:
                raise UserError(400, "No accumulated gradients: call forward_backward before optim_step")
            for param_group in group.optimizer.param_groups:
                param_group["lr"] = float(adam.get("learning_rate", 1e-4))
                param_group["betas"] = (float(adam.get("beta1", 0.9)), float(adam.get("beta2", 0.95)))
                param_group["eps"] = float(adam.get("eps", 1e-12))
                param_group["weight_decay"] = float(adam.get("weight_decay", 0.0))
            clip = float(adam.get("grad_clip_norm", 0.0))
            service.model.clip_grad_and_step(max_grad_norm=clip if clip > 0 else math.inf, adapter_name=model_id)
            return {"metrics": {"learning_rate": float(adam.get("learning_rate", 1e-4))}}

        return future(service.run(f"model:{model_id}", tenant, task), model_id)

    @router.post("/save_weights")
    def save_weights(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        model_id = str(body.get("model_id", ""))
        service, record = model_of(model_id, tenant)
        submitted = service.save(record, body.get("path"), True, False, {}, post=lambda saved: {
            "path": to_tinker_uri(saved["twinkle_path"]), "type": "save_weights"})
        return future(submitted, model_id)

    @router.post("/load_weights")
    def load_weights(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        model_id = str(body.get("model_id", ""))
        service, record = model_of(model_id, tenant)
        path = str(body.get("path", ""))
        submitted = service.load(record, to_twinkle_uri(path), bool(body.get("optimizer", False)),
                                 post=lambda: {"path": path, "type": "load_weights"})
        return future(submitted, model_id)

    sampling_sessions: dict[str, dict[str, Any]] = {}  # sampling_<hex> -> {tenant, base_model, model_path}

    def open_sampling_session(tenant: str, base_model: str | None, model_path: str | None) -> str:
        if model_path:
            meta = server.checkpoints.metadata(tenant, to_twinkle_uri(model_path))  # 404 unless the caller's
            base_model = base_model or meta.get("base_model")
        if not base_model or base_model not in server.samplers:
            raise UserError(400, f"base_model is required but could not be resolved (got {base_model!r}; sampled "
                                 f"models: {sorted(server.samplers)})")
        sampling_id = f"sampling_{uuid.uuid4().hex}"
        sampling_sessions[sampling_id] = {"tenant": tenant, "base_model": base_model,
                                          "model_path": to_twinkle_uri(model_path) if model_path else None}
        return sampling_id

    @router.post("/create_sampling_session")
    def create_sampling_session(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        if server.sessions.get(str(body.get("session_id", "")), tenant) is None:
            raise NotFound("Unknown session")
        sampling_id = open_sampling_session(tenant, body.get("base_model"), body.get("model_path"))
        return {"sampling_session_id": sampling_id, "type": "create_sampling_session"}

    @router.get("/samplers/{sampling_id}")
    def get_sampler(sampling_id: str, tenant: TenantDep) -> dict[str, Any]:
        session = sampling_sessions.get(sampling_id)
        if session is None or session["tenant"] != tenant:
            raise NotFound(f"Sampler {sampling_id} not found")
        path = session["model_path"]
        return {"sampler_id": sampling_id, "base_model": session["base_model"],
                "model_path": to_tinker_uri(path) if path else None}

    @router.post("/save_weights_for_sampler")
    def save_weights_for_sampler(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        model_id = str(body.get("model_id", ""))
        service, record = model_of(model_id, tenant)
        ephemeral = body.get("sampling_session_seq_id") is not None

        def answer(saved: dict[str, Any]) -> dict[str, Any]:
            if ephemeral:  # the SDK's save_weights_and_get_sampling_client: a session, no path
                sampling_id = open_sampling_session(tenant, record.base_model, saved["twinkle_path"])
                return {"path": None, "sampling_session_id": sampling_id, "type": "save_weights_for_sampler"}
            return {"path": to_tinker_uri(saved["twinkle_path"]), "type": "save_weights_for_sampler"}

        return future(service.save(record, body.get("path"), False, True, {}, post=answer), model_id)

    @router.post("/asample")
    def asample(tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        session = sampling_sessions.get(str(body.get("sampling_session_id") or ""))
        if body.get("sampling_session_id") and (session is None or session["tenant"] != tenant):
            raise NotFound("Unknown sampling session")
        base = body.get("base_model") or (session or {}).get("base_model")
        model_path = body.get("model_path") or (session or {}).get("model_path")
        if not base and model_path:
            base = server.checkpoints.metadata(tenant, to_twinkle_uri(model_path)).get("base_model")
        if not base or base not in server.samplers:
            raise UserError(400, "base_model is required but could not be resolved")
        sampler = server.samplers[base][1]
        try:
            prompt = [int(t) for chunk in body["prompt"]["chunks"] for t in chunk["tokens"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(400, f"bad prompt: needs chunks[].tokens ({exc})") from exc
        given = body.get("sampling_params") or {}
        stop = given.get("stop")
        params = {
            "max_tokens": given.get("max_tokens") or 256, "temperature": float(given.get("temperature", 1.0)),
            "top_k": int(given.get("top_k", -1)), "top_p": float(given.get("top_p", 1.0)),
            "seed": given.get("seed"), "num_samples": int(body.get("num_samples", 1)), "logprobs": 0,
            "stop": [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str)],
        }

        def answer(result: dict[str, Any]) -> dict[str, Any]:
            sequences = [{"stop_reason": "stop" if seq["stop_reason"] == "stop" else "length",
                          "tokens": seq["tokens"], "logprobs": [step[0][1] for step in seq["logprobs"] or []]}
                         for seq in result["samples"][0]["sequences"]]
            return {"sequences": sequences, "type": "sample"}

        submitted = sampler.sample(tenant, None, [{"input_ids": prompt}], params, "",
                                   to_twinkle_uri(model_path) if model_path else None, post=answer)
        # SDK >= 0.38 stamps these onto the returned sequences (one per sample, in order); 0.16 ignores them
        return {**future(submitted), "sample_sequence_ids": [f"{submitted[0]}-{i}"
                                                             for i in range(int(body.get("num_samples", 1)))]}

    @router.get("/training_runs")
    def training_runs(tenant: TenantDep, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        runs = server.checkpoints.list_runs(tenant)
        return {"training_runs": [tinker_run(r) for r in runs[offset:offset + limit]],
                "cursor": {"limit": limit, "offset": offset, "total_count": len(runs)}}

    @router.get("/training_runs/{run}")
    def training_run(run: str, tenant: TenantDep) -> dict[str, Any]:
        return tinker_run(server.checkpoints.read_run(tenant, run))

    @router.get("/training_runs/{run}/checkpoints")
    def checkpoints(run: str, tenant: TenantDep) -> dict[str, Any]:
        return {"checkpoints": [tinker_checkpoint(c) for c in server.checkpoints.list(tenant, run)], "cursor": None}

    @router.post("/retrieve_future")
    async def retrieve_future(tenant: TenantDep, request: Request, body: Annotated[dict[str, Any], Body()]) -> Any:
        result = await long_poll(server, tenant, body)
        if CONTENT_TYPE in request.headers.get("accept", "") and isinstance(result, dict):
            # SDK >= 0.38 reads ForwardBackwardOutput and SampleResponse only as protobuf; everything else
            # (try_again, errors, other results) stays JSON, as it expects
            if "loss_fn_outputs" in result:
                return Response(encode_forward_backward_output(result), media_type=CONTENT_TYPE)
            if result.get("type") == "sample":
                return Response(encode_sample_response(result), media_type=CONTENT_TYPE)
        return result

    return router


async def long_poll(server: Server, tenant: str, body: dict[str, Any]) -> Any:
    """http.md §4.2: wait up to the long-poll timeout; a failure is a 200 ``{error, category}`` as the SDK expects."""
    import asyncio

    request_id = str(body.get("request_id", ""))
    limit = server.settings.long_poll_timeout
    timeout = min(float(body.get("timeout", limit)), limit)
    record = await asyncio.to_thread(server.futures.wait, request_id, tenant, timeout)
    if record is None:
        raise NotFound(f"Future {request_id} not found (unknown, another tenant's, or expired)")
    if record["status"] == "completed":
        return record["result"]
    if record["status"] == "failed":
        return {"error": record["error"], "category": record["category"], "status": record.get("http_status")}
    return {"type": "try_again", "request_id": request_id, "queue_state": record["queue_state"],
            "queue_state_reason": record["queue_state_reason"]}
