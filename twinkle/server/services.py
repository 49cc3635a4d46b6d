"""The model and sampler services: what each HTTP route does, independent of FastAPI.

``ModelService`` owns one ``MultiLoraTransformersModel`` and its compute queue; every call on the model runs on
that queue. Adapter names on the wire are short (``default``); here they become ``<session>-<short>``, which is
also the training-run id. Ownership is checked before anything is queued: another tenant's adapter is "not found".
"""

from __future__ import annotations

import inspect
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinkle.server.checkpoints import CheckpointStore, check_name, safe_name
from twinkle.server.compute import ComputeQueue
from twinkle.server.config import ModelArgs, SamplerArgs
from twinkle.server.errors import NotFound, UserError
from twinkle.server.limits import Admission, count_input_tokens
from twinkle.server.state import AdapterRecord, FutureStore, Registry, Sessions
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.server")

__all__ = ["ModelService", "SamplerService", "deserialize", "to_jsonable"]

# model methods a tenant may call by name with keyword arguments (the rest have dedicated handlers). Deliberately
# absent: apply_patch (it would change the base model under every tenant) and anything taking a server path.
GENERIC = {
    "forward", "forward_only", "forward_backward", "calculate_loss", "backward", "step", "zero_grad", "lr_step",
    "clip_grad_norm", "clip_grad_and_step", "calculate_metric", "get_train_configs", "get_state_dict",
    "set_loss", "set_optimizer", "set_lr_scheduler", "set_template", "set_processor", "add_metric",
}
_SERVER_ONLY_KW = ("output_dir", "adapter_name", "remote_group", "device_mesh", "model_id")


def to_jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def deserialize(value: Any) -> Any:
    """http.md §9.6: a JSON string tagged ``_TWINKLE_TYPE_`` becomes its object (``LoraConfig`` here)."""
    if isinstance(value, str) and value.startswith("{") and "_TWINKLE_TYPE_" in value:
        data = json.loads(value)
        kind = data.pop("_TWINKLE_TYPE_")
        if kind == "LoraConfig":
            from peft import LoraConfig

            try:
                return LoraConfig(**data)
            except TypeError as exc:
                raise UserError(400, f"bad LoraConfig: {exc}") from exc
        raise UserError(400, f"unknown _TWINKLE_TYPE_ {kind!r}; this server rebuilds LoraConfig only")
    return value


class ModelService:
    def __init__(self, name: str, args: ModelArgs, *, sessions: Sessions, registry: Registry, futures: FutureStore,
                 checkpoints: CheckpointStore, per_token_limit: int) -> None:
        from twinkle.model import MultiLoraTransformersModel

        if args.backend != "transformers":
            raise ValueError(f"backend {args.backend!r} is not available here; use backend: transformers")
        self.name = name
        self.args = args
        self.sessions, self.registry, self.futures, self.checkpoints = sessions, registry, futures, checkpoints
        self.per_token_limit = per_token_limit
        self.model = MultiLoraTransformersModel(
            model_id=args.model_id, max_loras=args.max_loras, max_length=args.max_length or 8192,
            device_mesh=None,
        )
        self.queue = ComputeQueue(f"model:{name}", futures, queue_timeout=args.queue_config.queue_timeout)
        self.admission = Admission(args.queue_config)
        self.adapter_timeout = args.adapter_config.adapter_timeout
        self.max_lifetime = args.adapter_config.adapter_max_lifetime
        self._sweeper = threading.Thread(target=self._sweep_loop, daemon=True, name=f"twinkle-sweep-{name}")
        self._stop = threading.Event()
        self._sweeper.start()

    # ------------------------------------------------------------------ naming, ownership

    def full_name(self, short: str, session_id: str | None, tenant: str) -> str:
        check_name(short, "adapter_name")
        if self.sessions.get(session_id, tenant) is None:
            raise NotFound("Unknown session: create one (POST /api/v1/twinkle/create_session, or "
                           "init_twinkle_client) and send it as X-Twinkle-Session-Id; after a server restart, "
                           "add your adapter again and load your last checkpoint")
        return f"{session_id}-{short}"

    def owned(self, short: str, session_id: str | None, tenant: str) -> AdapterRecord:
        check_name(short, "adapter_name")
        record = self.registry.get(f"{session_id}-{short}", tenant) if session_id else None
        if record is None or record.base_model != self.name:
            raise NotFound(f"Adapter {short} not found (it expired, was removed, or the server restarted); "
                           f"add_adapter_to_model again and load your last checkpoint")
        return record

    def run(self, key: str, tenant: str, fn):
        return self.queue.submit(key, tenant, fn, model_id=self.name)

    # ------------------------------------------------------------------ adapters

    def add_adapter(self, short: str, session_id: str | None, tenant: str, config: Any, kwargs: dict[str, Any]):
        from peft import LoraConfig

        name = self.full_name(short, session_id, tenant)
        config = deserialize(config)
        if isinstance(config, dict):
            config = LoraConfig(**config)
        if not isinstance(config, LoraConfig):
            raise UserError(400, "config must be a LoraConfig (tagged JSON string or a dict of its fields)")
        if kwargs.pop("save_dir", None):
            raise UserError(400, "save_dir is not supported here: checkpoints go to the server's storage")
        if config.r > self.model.max_r:
            raise UserError(400, f"Too big rank for lora: {config.r}; this server allows r <= {self.model.max_r}")
        record = AdapterRecord(name, short, tenant, str(session_id), self.name, config.r)
        self.registry.reserve(record, self.per_token_limit)

        def task():
            self.model.add_adapter_to_model(name, config, **kwargs)
            self.model.set_optimizer("AdamW", adapter_name=name)  # a default, as TransformersModel users expect
            self.checkpoints.write_run(tenant, name, {
                "base_model": self.name, "lora_rank": config.r, "user_metadata": {"adapter_name": short},
                "train_unembed": False, "train_mlp": True, "train_attn": True,
            })
            return {"status": "ok", "adapter_name": name}

        request_id, future = self.run(f"model:{name}", tenant, task)
        future.add_done_callback(lambda f: f.exception() is not None and self.registry.release(name))
        return request_id, future

    def remove_adapter(self, name: str, reason: str = "removed") -> None:
        """Expire or remove an adapter: new calls see it gone at once; the slot is freed on the queue."""
        self.registry.release(name)
        self.queue.submit(f"model:{name}", "", lambda: self.model.remove_adapter(name))
        logger.info("adapter %s %s", name, reason)

    def _sweep_loop(self) -> None:
        interval = max(0.05, min(10.0, self.adapter_timeout / 4))
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception:
                logger.exception("adapter sweep failed")

    def sweep(self) -> list[str]:
        now = time.time()
        gone = []
        for record in self.registry.all():
            if record.base_model != self.name:
                continue
            silent = self.sessions.silent_for(record.session_id)
            if silent is None or silent >= self.adapter_timeout or now - record.created_at >= self.max_lifetime:
                self.remove_adapter(record.name, "expired")
                gone.append(record.name)
        return gone

    # ------------------------------------------------------------------ calls

    def call(self, op: str, record: AdapterRecord, kwargs: dict[str, Any]):
        if op not in GENERIC:
            raise UserError(404, f"unknown model route {op!r}")
        for key in _SERVER_ONLY_KW:
            kwargs.pop(key, None)
        kwargs = {k: deserialize(v) for k, v in kwargs.items()}
        if op in ("forward", "forward_only", "forward_backward"):
            self.admission.admit(record.tenant, count_input_tokens(kwargs.get("inputs")))
        method = getattr(self.model, op)
        self._check_kwargs(op, method, kwargs)
        return self.run(f"model:{record.name}", record.tenant,
                        lambda: to_jsonable(method(adapter_name=record.name, **kwargs)))

    @staticmethod
    def _check_kwargs(op: str, method: Any, kwargs: dict[str, Any]) -> None:
        params = inspect.signature(method).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()) and op not in ("forward_backward",):
            return
        unknown = [k for k in kwargs if k not in params]
        if unknown and op != "forward_backward":
            raise UserError(400, f"{op} takes no argument(s) {unknown}; it takes {sorted(params)}")

    def save(self, record: AdapterRecord, name: str | None, save_optimizer: bool, is_sampler: bool, kwargs,
             post: Any = None):
        """Queue a save; ``post`` (optional) turns ``{twinkle_path, checkpoint_dir}`` into another answer."""
        kind = "sampler_weights" if is_sampler else "weights"
        ckpt = safe_name(name)

        def task():
            with tempfile.TemporaryDirectory(prefix="twinkle-save-") as tmp:
                folder = self.model.save(name=ckpt, output_dir=tmp, adapter_name=record.name,
                                         save_optimizer=save_optimizer and not is_sampler)
                meta = self.checkpoints.save(record.tenant, record.name, kind, ckpt, Path(folder), {
                    "base_model": self.name, "lora_rank": record.rank,
                    "user_metadata": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str))},
                })
            result = {"twinkle_path": meta["twinkle_path"], "checkpoint_dir": meta["twinkle_path"]}
            return post(result) if post is not None else result

        return self.run(f"model:{record.name}", record.tenant, task)

    def load(self, record: AdapterRecord, uri: str, load_optimizer: bool, resume: bool = False, post: Any = None):
        folder = self.checkpoints.fetch(record.tenant, uri)  # 400/404 here, before queueing

        def task():
            if resume:
                return self.model.resume_from_checkpoint(str(folder), adapter_name=record.name)
            self.model.load(str(folder), load_optimizer=load_optimizer, adapter_name=record.name)
            return post() if post is not None else None

        return self.run(f"model:{record.name}", record.tenant, task)

    def capacity(self) -> dict[str, int]:
        used = len(self.model.tenants)
        return {"max_loras": self.model.max_loras, "used_loras": used, "free_loras": self.model.max_loras - used}

    def stop(self) -> None:
        self._stop.set()
        self.queue.stop()


class SamplerService:
    """A ``TorchSampler`` on the same base model; tenants' adapters are loaded from their checkpoints or copied
    from their live training adapter, under the server name, so tenants never share an adapter."""

    def __init__(self, name: str, args: SamplerArgs, *, sessions: Sessions, registry: Registry,
                 futures: FutureStore, checkpoints: CheckpointStore, model: ModelService | None) -> None:
        from twinkle.sampler import TorchSampler

        if args.sampler_type == "vllm":
            raise ValueError("sampler_type 'vllm' is not available in this build; use sampler_type: torch")
        self.name, self.args = name, args
        self.sessions, self.registry, self.futures, self.checkpoints = sessions, registry, futures, checkpoints
        self.model = model
        self.sampler = TorchSampler(args.model_id)
        self.queue = ComputeQueue(f"sampler:{name}", futures, queue_timeout=args.queue_config.queue_timeout)

    def sample(self, tenant: str, session_id: str | None, inputs: Any, sampling_params: Any, adapter_name: str,
               adapter_uri: str | None, post: Any = None):
        folder = self.checkpoints.fetch(tenant, adapter_uri) if adapter_uri else None
        live = None
        if adapter_name and folder is None:
            if self.model is None:
                raise UserError(400, "this sampler serves no training model: pass adapter_uri")
            live = self.model.owned(adapter_name, session_id, tenant)
        source = adapter_uri or (live.name if live is not None else "")
        slot = f"{tenant}-{source}" if source else ""
        slot = slot.replace("/", "_").replace(":", "_")

        def task():
            if live is not None:
                assert self.model is not None  # live adapters exist only with a model
                state, config = self.model.queue.submit(
                    f"model:{live.name}", tenant,
                    lambda: (self.model.model.get_state_dict(adapter_name=live.name),
                             self.model.model.tenant_configs[live.name]),
                )[1].result()
                self.sampler.receive_weights(state, adapter_name=slot, peft_config=config)
            responses = self.sampler.sample(inputs, sampling_params, adapter_name=slot,
                                            adapter_path=str(folder) if folder else None)
            result = {"samples": to_jsonable(responses)}
            return post(result) if post is not None else result

        return self.queue.submit(f"token:{tenant}", tenant, task, model_id=self.name)

    def set_template(self, template_cls: str, kwargs: dict[str, Any]):
        kwargs.pop("model_id", None)
        return self.queue.submit("template", "", lambda: self.sampler.set_template(template_cls, **kwargs))

    def stop(self) -> None:
        self.queue.stop()
