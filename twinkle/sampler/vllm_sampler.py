"""``VLLMEngine`` and ``vLLMSampler``: sampling with vLLM on NVIDIA GPUs (gpu.md §1.3, §1.4, §2.5). [never run]

**Status: written against the contract and never executed.** This project has had no GPU machine, and vLLM is not
installed in its CI; only the pure helpers below (engine arguments, stop reasons, log-prob conversion, the LoRA
folder a sync writes) are tested. Building either class without vLLM or a GPU raises ``MissingDependencyError``
naming ``pip install 'twinkle-commons[vllm]'``.

The sampler keeps TorchSampler's outputs: ``new_input_feature`` is the prompt's feature (deep-copied, extra keys
kept) plus the completion, with the reply appended to ``messages``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from twinkle.checkpoint_engine import CheckpointEngineMixin
from twinkle.checkpoint_engine._names import strip_peft_prefix
from twinkle.data_format import SampledSequence, SampleResponse, SamplingParams
from twinkle.errors import DataError
from twinkle.infra import remote_class, remote_function
from twinkle.sampler.base import BaseSamplerEngine, Sampler, complete_feature, is_trajectory
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.logger import get_logger
from twinkle.utils.requires import require_cuda, requires

logger = get_logger("twinkle.sampler")

__all__ = [
    "VLLMEngine",
    "build_engine_args",
    "convert_logprobs",
    "default_sampler_engine_args",
    "map_stop_reason",
    "round_lora_rank",
    "vLLMSampler",
    "write_lora_folder",
]

# the LoRA ranks vLLM accepts for max_lora_rank
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SYNCED_LORA = ("twinkle_lora", 111)  # (name, id) of the adapter a LoRA sync installs

ENGINE_DEFAULTS: dict[str, Any] = {
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.7,
    "max_model_len": None,
    "max_num_seqs": 256,
    "enable_lora": False,
    "max_loras": 1,
    "max_lora_rank": 32,
    "enable_sleep_mode": False,
    "enable_prefix_caching": False,
    "enforce_eager": False,
    "trust_remote_code": True,
    "dtype": "auto",
    "quantization": None,
    "load_format": "auto",
    "logprobs_mode": "processed_logprobs",  # log-probs after temperature, top-k and top-p, as TorchSampler's
}


# ---------------------------------------------------------------- pure helpers (tested on the CPU)


def round_lora_rank(rank: int) -> int:
    """The smallest rank vLLM allows that is >= ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"max_lora_rank={rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def build_engine_args(model: str, known_fields: set[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``AsyncEngineArgs`` keywords: the contract's defaults, the LoRA rank rounded up, the ``mp`` executor above
    TP 1, and keys the engine does not know (``known_fields``) dropped with a warning."""
    args = {**ENGINE_DEFAULTS, **kwargs, "model": model}
    args["max_lora_rank"] = round_lora_rank(int(args["max_lora_rank"]))
    if int(args["tensor_parallel_size"]) > 1:
        args.setdefault("distributed_executor_backend", "mp")
    if known_fields is not None:
        dropped = sorted(k for k in args if k not in known_fields)
        if dropped:
            logger.warning("vLLM's AsyncEngineArgs does not know %s: dropped", dropped)
        args = {k: v for k, v in args.items() if k in known_fields}
    return args


def default_sampler_engine_args(engine_args: Mapping | None, rank: int, visible_devices: str | None) -> dict:
    """vLLMSampler's engine arguments: TP = the number of visible devices, seed = 42 + the global rank."""
    args = dict(engine_args or {})
    if "tensor_parallel_size" not in args:
        devices = [d for d in (visible_devices or "").split(",") if d.strip()]
        args["tensor_parallel_size"] = max(1, len(devices))
    args.setdefault("seed", 42 + rank)
    return args


def map_stop_reason(finish_reason: str | None) -> str:
    """vLLM's finish reason as ours: None -> 'length'; stop/abort/error kept; anything else -> 'length'."""
    return finish_reason if finish_reason in ("stop", "abort", "error") else "length"


def convert_logprobs(token_ids: list[int], logprobs: list[Mapping[int, Any]] | None, k: int | None) -> Any:
    """vLLM's per-token ``{token: Logprob}`` dicts as ``[(token, logprob), ...]`` lists.

    ``k=1``: the sampled token's; ``k>1``: vLLM's entries sorted descending, cut to k (the sampled token may be
    missing); ``k=0``: ``[]`` per token (vLLM's quirk); ``None``: None.
    """
    if k is None or logprobs is None:
        return None

    def value(entry: Any) -> float:  # a vLLM Logprob, or a plain float
        return float(getattr(entry, "logprob", entry))

    out: list[list[tuple[int, float]]] = []
    for token, entries in zip(token_ids, logprobs, strict=False):
        if k == 0:
            out.append([])
            continue
        if k == 1:
            out.append([(int(token), value(entries[token]))])
        else:
            ranked = sorted(((int(t), value(e)) for t, e in entries.items()), key=lambda p: -p[1])
            out.append(ranked[:k])
    return out


def write_lora_folder(folder: str, weights: Mapping[str, Any], peft_config: Mapping[str, Any]) -> str:
    """Write synced LoRA weights as a PEFT folder vLLM can load (names with ``base_model.model.`` and without the
    adapter segment, as ``get_peft_model_state_dict`` gives them)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {("base_model.model." + strip_peft_prefix(k)): v.contiguous() for k, v in weights.items()}
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in dict(peft_config).items()}
    config.setdefault("peft_type", "LORA")
    with open(os.path.join(folder, "adapter_config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, default=str)
    return folder


# ---------------------------------------------------------------- the engine


def _load_weights_on_worker(worker: Any, weights: list) -> None:
    """Runs inside each vLLM worker (``collective_rpc``): load one bucket of base weights."""
    worker.model_runner.model.load_weights(weights=[(name, tensor.to(worker.device)) for name, tensor in weights])


class VLLMEngine(BaseSamplerEngine):
    """A wrapper over vLLM v1 ``AsyncLLM`` (gpu.md §1.3). [never run]

    Raises:
        MissingDependencyError: no vLLM, or no CUDA device.
    """

    def __init__(self, model_id: str, **kwargs: Any) -> None:
        require_cuda("VLLMEngine", extra="vllm")
        vllm = requires("vllm", extra="vllm", what="VLLMEngine")
        import dataclasses

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        self.engine_args = build_engine_args(model_id, known, **kwargs)
        self.enable_lora = bool(self.engine_args.get("enable_lora"))
        self.enable_sleep_mode = bool(self.engine_args.get("enable_sleep_mode"))
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.engine_args))
        self._vllm = vllm
        self._lora_cache: dict[str, Any] = {}
        self._synced_lora: Any = None
        self._lora_dir = tempfile.mkdtemp(prefix="twinkle_lora_")

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def _get_or_load_lora(self, path: str) -> Any:
        if path in self._lora_cache:
            return self._lora_cache[path]
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            logger.warning("%s has no adapter_config.json: sampling without it", path)
            return None
        from vllm.lora.request import LoRARequest

        request = LoRARequest(os.path.basename(path.rstrip("/")), 1000 + len(self._lora_cache), path)
        self._lora_cache[path] = request
        return request

    async def sample(self, prompt_token_ids: list[int], sampling_params: Any = None, *, num_samples: int = 1,
                     logprobs: bool = True, include_prompt_logprobs: bool = False, topk_prompt_logprobs: int = 0,
                     adapter_uri: str | None = None, request_id: str | None = None, images: Any = None,
                     videos: Any = None, disable_lora: bool = False) -> SampleResponse:
        params = sampling_params if isinstance(sampling_params, SamplingParams) else \
            SamplingParams.from_dict(dict(sampling_params or {}))
        kw = params.to_vllm_kwargs()
        kw["n"] = num_samples or params.num_samples
        zero = params.max_tokens == 0
        if zero:
            kw["max_tokens"] = 1  # vLLM needs one token; it is dropped below
        if include_prompt_logprobs or zero:
            kw["prompt_logprobs"] = max(topk_prompt_logprobs, params.prompt_logprobs or 0)
        lora = None
        if self.enable_lora and not disable_lora:
            lora = self._get_or_load_lora(adapter_uri) if adapter_uri else self._synced_lora
        prompt: dict[str, Any] = {"prompt_token_ids": list(prompt_token_ids)}
        if images or videos:
            prompt["multi_modal_data"] = {k: v for k, v in (("image", images), ("video", videos)) if v}
        final: Any = None
        async for output in self.engine.generate(prompt, self._vllm.SamplingParams(**kw),
                                                 request_id or uuid.uuid4().hex, lora_request=lora):
            final = output
        response = SampleResponse(prompt_token_ids=list(prompt_token_ids))
        if final is None:
            raise RuntimeError(f"vLLM returned no output for request {request_id!r}")
        if final.prompt_logprobs is not None:
            scored = list(zip(prompt_token_ids[1:], final.prompt_logprobs[1:], strict=False))
            response.prompt_logprobs = [None, *[float(e[t].logprob) for t, e in scored]]
            response.topk_prompt_logprobs = [None, *[
                sorted(((int(t), float(v.logprob)) for t, v in e.items()), key=lambda p: -p[1])[:topk_prompt_logprobs]
                for _, e in scored]]
        for completion in final.outputs:
            tokens = [] if zero else list(completion.token_ids)
            response.sequences.append(SampledSequence(
                stop_reason=map_stop_reason(completion.finish_reason), tokens=tokens,
                logprobs=None if zero else convert_logprobs(tokens, completion.logprobs, params.logprobs),
                routed_experts=getattr(completion, "routed_experts", None),
            ))
        return response

    async def update_weights(self, weights: Any, adapter_name: str | None = None, peft_config: Any = None,
                             base_sync_done: bool = False, **kwargs: Any) -> None:
        """Base mode: buckets of weights into every worker's ``load_weights`` (vLLM fuses q/k/v itself). LoRA mode
        (``peft_config``): the adapter is written to a folder and becomes the default ``LoRARequest``."""
        if peft_config is not None:
            from vllm.lora.request import LoRARequest

            collected = {name: tensor.detach().to("cpu").clone() async for name, tensor in weights}
            folder = write_lora_folder(os.path.join(self._lora_dir, uuid.uuid4().hex), collected, peft_config)
            name, lora_id = SYNCED_LORA
            if self._synced_lora is not None:
                await self.engine.remove_lora(self._synced_lora.lora_int_id)
            self._synced_lora = LoRARequest(name, lora_id, folder)
            await self.engine.add_lora(self._synced_lora)
            return
        bucket_bytes = int(os.environ.get("TWINKLE_VLLM_BUCKET_SIZE_MB", "2048")) << 20
        bucket, size = [], 0
        async for name, tensor in weights:
            bucket.append((name, tensor.detach().clone()))
            size += tensor.numel() * tensor.element_size()
            if size >= bucket_bytes:
                await self.engine.collective_rpc(_load_weights_on_worker, args=(bucket,))
                bucket, size = [], 0
        if bucket:
            await self.engine.collective_rpc(_load_weights_on_worker, args=(bucket,))
        self._synced_lora = None  # a base sync clears the synced adapter

    async def sleep(self, level: int = 2) -> None:
        if not self.enable_sleep_mode:
            logger.warning("sleep() needs enable_sleep_mode=True: ignored")
            return
        await self.engine.sleep(level)

    async def wake_up(self, tags: Any = None) -> None:
        if not self.enable_sleep_mode:
            logger.warning("wake_up() needs enable_sleep_mode=True: ignored")
            return
        await self.engine.wake_up(tags)

    async def reset_prefix_cache(self) -> None:
        await self.engine.reset_prefix_cache()

    def shutdown(self) -> None:
        self.engine.shutdown()


# ---------------------------------------------------------------- the sampler


@remote_class()
class vLLMSampler(Sampler, CheckpointEngineMixin):
    """Sampling with vLLM, one actor per ``tensor_parallel_size`` GPUs (gpu.md §1.4). [never run]

    Args:
        model_id: a hub id or a local folder.
        engine_args: ``VLLMEngine`` keywords (defaults: TP = visible devices, seed = 42 + rank).
        device_mesh: the data-parallel layout of the sampler group.

    Raises:
        MissingDependencyError: no vLLM, or no CUDA device.
    """

    def __init__(self, model_id: str, engine_args: dict | None = None, device_mesh: DeviceMesh | None = None,
                 **kwargs: Any) -> None:
        from twinkle.model._hub import resolve_model_dir

        require_cuda("vLLMSampler", extra="vllm")
        requires("vllm", extra="vllm", what="vLLMSampler")
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        os.environ.setdefault("VLLM_ENGINE_ITERATION_TIMEOUT_S", "86400")
        import torch

        self.model_id = model_id
        self.model_dir = resolve_model_dir(model_id)
        self.device_mesh = device_mesh
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.template: Any = None
        args = default_sampler_engine_args(engine_args, int(os.environ.get("RANK", "0")),
                                           os.environ.get("CUDA_VISIBLE_DEVICES"))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="twinkle-vllm", daemon=True)
        self._thread.start()
        self.engine = self._call(self._make_engine(self.model_dir, args))
        self.tokenizer = self.engine.get_tokenizer()
        atexit.register(self.shutdown)

    @staticmethod
    async def _make_engine(model_dir: str, args: dict) -> VLLMEngine:
        return VLLMEngine(model_dir, **args)  # AsyncLLM wants to be built inside its loop

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @remote_function(dispatch="all")
    def set_template(self, template_cls: Any = "Template", **kwargs: Any) -> None:
        super().set_template(template_cls, **kwargs)

    @remote_function(dispatch="all")
    def apply_patch(self, patch_cls: Any, **kwargs: Any) -> None:
        raise NotImplementedError("vLLMSampler does not take patches; patch the trainer's model")

    @remote_function(dispatch="slice_dp", collect="flatten")
    def sample(self, inputs: Any, sampling_params: Any = None, adapter_name: str = "", adapter_path: str | None = None,
               *, return_encoded: bool = False, use_base_model: bool = False, num_samples: int | None = None):
        """As ``TorchSampler.sample`` (same inputs and outputs); inputs run concurrently, results keep their order."""
        params = SamplingParams.from_dict(sampling_params) if isinstance(sampling_params, Mapping) else \
            (sampling_params or SamplingParams())
        items = [inputs] if isinstance(inputs, Mapping) else list(inputs)
        prompts = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise DataError(f"input {i} is not a dict (InputFeature or Trajectory): {type(item).__name__}")
            encoded = self.encode_trajectory(item) if is_trajectory(item) else None
            ids = [int(t) for t in (encoded or item)["input_ids"]]
            prompts.append((ids, self.prompt_feature(item, encoded), item))

        async def run_all() -> list[SampleResponse]:
            return await asyncio.gather(*[
                self.engine.sample(ids, params, num_samples=num_samples or params.num_samples,
                                   include_prompt_logprobs=params.prompt_logprobs is not None,
                                   topk_prompt_logprobs=params.prompt_logprobs or 0, adapter_uri=adapter_path,
                                   images=item.get("images"), videos=item.get("videos"),
                                   disable_lora=use_base_model)
                for ids, _, item in prompts])

        responses = self._call(run_all())
        for response, (ids, feature, _) in zip(responses, prompts, strict=True):
            for seq in response.sequences:
                seq.decoded = self.decode_response(seq.tokens)
                seq.new_input_feature = complete_feature(feature, ids, seq.tokens, seq.decoded if seq.tokens else None)
        return responses

    @remote_function(dispatch="all", lazy_collect=True)
    def receive_weights(self, base_sync_done: bool = False, peft_config: Any = None) -> None:
        """Stream the checkpoint engine's weights into vLLM (LoRA mode with ``peft_config``)."""
        engine = self.get_checkpoint_engine()
        self._call(self.engine.update_weights(engine.receive_weights(), peft_config=peft_config,
                                              base_sync_done=base_sync_done))

    @remote_function(dispatch="all", collect="first")
    def get_state_keys(self) -> list[str]:
        return list(self._call(self.engine.engine.collective_rpc(
            lambda worker: [n for n, _ in worker.model_runner.model.named_parameters()]))[0])

    @remote_function(dispatch="all", collect="first")
    def reset_prefix_cache(self) -> None:
        self._call(self.engine.reset_prefix_cache())

    @remote_function(dispatch="all", collect="first")
    def reset_mm_cache(self) -> None:
        self._call(self.engine.engine.reset_mm_cache())

    @remote_function(dispatch="all", collect="first")
    def reset_encoder_cache(self) -> None:
        reset = getattr(self.engine.engine, "reset_encoder_cache", None)
        if reset is not None:
            self._call(reset())

    @remote_function(dispatch="all", collect="first")
    def sleep(self, level: int = 1) -> None:
        self._call(self.engine.sleep(level))

    @remote_function(dispatch="all", collect="first")
    def wake_up(self, tags: Any = None) -> None:
        self._call(self.engine.wake_up(tags))

    @remote_function(dispatch="all", collect="first")
    def shutdown(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
            self.engine = None
