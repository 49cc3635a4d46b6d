"""``TorchSampler``: sample completions with a ``transformers`` causal LM on the CPU or a GPU (no vLLM).

The same interface as ``vLLMSampler`` (gpu.md §1.4, §1.5): ``set_template``, ``sample`` (same inputs, same
``SampleResponse`` outputs), ``receive_weights`` (in-process, or from a ``CheckpointEngineManager`` sync), the
cache and sleep no-ops, ``get_state_keys``; plus ``load_adapter`` to pick up a LoRA adapter written by
``TransformersModel.save``. Differences from vLLM, on purpose: ``logprobs=k`` lists the sampled token first and
then the top-k (vLLM: the sorted top-k only), and ``logprobs=0`` still gives the sampled token's log-prob (vLLM:
``[]``); ``adapter_name`` picks a loaded adapter (vLLM only prints it).

Decoding is a plain loop with a KV cache: one prompt at a time, its ``num_samples`` completions as one batch.
That keeps prompts unpadded (outputs do not depend on what else is in the batch) at the cost of throughput; it is
meant for small models, tests and RL loops without vLLM, not for serving.

Per step the next-token distribution is built in this order (as ``transformers`` does):
repetition penalty (over prompt and completion so far) -> temperature -> top_k -> top_p.
``logprobs`` are taken from that distribution (filtered tokens removed and the rest renormalised). So with
``top_k=-1``, ``top_p=1`` and ``repetition_penalty=1`` the sampled token's log-prob equals
``log_softmax(logits / temperature)``, i.e. ``TransformersModel.forward(temperature=T)['logps']`` on the same
weights, which is what a GRPO loop uses as ``old_logps``. With ``temperature=0`` (greedy) the reported
log-probs use temperature 1 (the point mass actually sampled from would give 0 everywhere).

Syncing weights each GRPO step (pick one)::

    sampler.receive_weights(model)              # one process: the TransformersModel itself (its active adapter)
    path = model.save('latest', output_dir=d)   # or through a folder
    sampler.load_adapter(path)                  # (also: sample(..., adapter_path=path))
    ckpt = CheckpointEngineManager(model, sampler)   # Ray mode: trainer and sampler groups in other processes
    ckpt.sync_weights(merge_and_sync=False)          # gloo on CPU groups
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch

from twinkle.checkpoint_engine import CheckpointEngineMixin
from twinkle.checkpoint_engine._names import is_lora_key, match_target_key, strip_base_layer, strip_peft_prefix
from twinkle.checkpoint_engine._util import run_coroutine
from twinkle.data_format import SampledSequence, SampleResponse, SamplingParams
from twinkle.errors import AdapterError, CheckpointError, ConfigError, DataError, TemplateError
from twinkle.infra import remote_class, remote_function
from twinkle.model._hub import resolve_model_dir
from twinkle.model._loading import load_causal_lm, pick_device
from twinkle.sampler.base import Sampler, complete_feature, is_trajectory
from twinkle.utils.construct import construct_class
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.sampler")

__all__ = ["TorchSampler"]

DEFAULT_ADAPTER = "default"
SYNCED_ADAPTER = "twinkle_lora"  # the adapter a LoRA-mode sync fills (vLLM's LoRARequest name)


def _as_id_list(value: Any, where: str) -> list[int]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dim() == 2 and value.shape[0] == 1:
            value = value[0]
        if value.dim() != 1:
            raise DataError(f"{where}: input_ids must be one sequence (1-D), got shape {tuple(value.shape)}")
        return [int(x) for x in value.tolist()]
    if isinstance(value, np.ndarray):
        if value.ndim == 2 and value.shape[0] == 1:
            value = value[0]
        if value.ndim != 1:
            raise DataError(f"{where}: input_ids must be one sequence (1-D), got shape {value.shape}")
        return [int(x) for x in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [int(x) for x in value]
    raise DataError(f"{where}: input_ids must be a list, array or tensor of token ids, got {type(value).__name__}")


@remote_class()
class TorchSampler(Sampler, CheckpointEngineMixin):
    """Generate completions with a ``transformers`` causal LM (``generate``-style decoding, any device).

    Args:
        model_id: ``ms://org/name``, ``hf://org/name``, a bare id (ModelScope) or a local folder.
        device_mesh: the data-parallel layout; injected from ``twinkle.initialize`` when omitted. Each data rank
            samples its own slice of the inputs (``dispatch='slice_dp'``); a mesh of device_type 'cpu' keeps the
            model on the CPU.
        engine_args: vLLM's engine arguments; accepted so vLLMSampler scripts run unchanged, and ignored.
        **model_kwargs: passed to ``from_pretrained`` (e.g. ``dtype=torch.bfloat16``; default float32).

    Raises:
        ModelNotFoundError: ``model_id`` cannot be resolved to a folder.
    """

    def __init__(self, model_id: str, device_mesh: DeviceMesh | None = None, engine_args: dict | None = None,
                 **model_kwargs: Any) -> None:
        import transformers

        if engine_args:
            logger.debug("TorchSampler ignores vLLM engine_args %s", sorted(engine_args))

        if not model_id:
            raise ConfigError("TorchSampler needs model_id= (a hub id or a local folder)")
        self.model_id = model_id
        self.device_mesh = device_mesh
        self.model_dir = resolve_model_dir(model_id)
        self.model = load_causal_lm(self.model_dir, **model_kwargs)
        self.device = pick_device(device_mesh)
        self.model.to(self.device).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=True)
        self.template: Any = None
        self.eos_ids = self._eos_ids()
        self._adapter_paths: dict[str, str] = {}
        self._synced_adapter: str | None = None  # set by a LoRA-mode receive_weights; sample() uses it by default
        # without params.seed, draws come from one generator seeded 42 + rank (as vLLM's engine seed)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(42 + int(os.environ.get("RANK", "0") or 0))
        # transformers >= 5.2x renamed past_key_values to cache
        params = inspect.signature(type(self.model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # ------------------------------------------------------------------ setup

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if value is None:
                continue
            ids.update([value] if isinstance(value, int) else list(value))
        return ids

    @property
    def _is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    @remote_function(dispatch="all")
    def set_template(self, template_cls: Any = "Template", **kwargs: Any) -> None:
        """A ``twinkle.template`` template (name, class or instance) for Trajectory inputs; built on this model."""
        super().set_template(template_cls, **kwargs)

    @remote_function(dispatch="all")
    def apply_patch(self, patch_cls: Any, **kwargs: Any) -> None:
        """Apply a ``twinkle.patch`` patch (class, name or instance) to the sampling model."""
        import twinkle.patch as patches
        from twinkle.patch import Patch

        patch: Any = construct_class(patch_cls, Patch, patches, kind="patch") if isinstance(patch_cls, str) \
            else (patch_cls() if inspect.isclass(patch_cls) else patch_cls)
        replaced = patch(self.model, **kwargs)
        if isinstance(replaced, torch.nn.Module):
            self.model = replaced

    # vLLM housekeeping that a transformers model does not need: no-ops, so vLLMSampler scripts run unchanged

    @remote_function(dispatch="all", collect="first")
    def reset_prefix_cache(self) -> None:
        """No-op (no cache survives a ``sample`` call here)."""

    @remote_function(dispatch="all", collect="first")
    def reset_mm_cache(self) -> None:
        """No-op."""

    @remote_function(dispatch="all", collect="first")
    def reset_encoder_cache(self) -> None:
        """No-op."""

    @remote_function(dispatch="all", collect="first")
    def sleep(self, level: int = 1) -> None:
        """No-op (vLLM frees its KV cache here)."""

    @remote_function(dispatch="all", collect="first")
    def wake_up(self, tags: Any = None) -> None:
        """No-op."""

    @remote_function(dispatch="all", collect="first")
    def shutdown(self) -> None:
        """No-op."""

    @remote_function(dispatch="all", collect="first")
    def get_state_keys(self) -> list[str]:
        """The model's state-dict keys without the PEFT prefix (what a weight sync may send)."""
        return [strip_peft_prefix(k) for k in self.model.state_dict()]

    # ------------------------------------------------------------------ weights

    @remote_function(dispatch="all")
    def load_adapter(self, path: str, adapter_name: str = DEFAULT_ADAPTER) -> None:
        """Load (or replace) a LoRA adapter from a folder written by ``TransformersModel.save`` and activate it.

        Call it after every save in a GRPO loop; a second call with the same name swaps the weights in place.

        Raises:
            AdapterError: the folder has no ``adapter_config.json`` / ``adapter_model.safetensors``.
        """
        from peft import LoraConfig, PeftConfig
        from safetensors.torch import load_file

        folder = resolve_model_dir(path) if not os.path.isdir(str(path)) else str(path)
        weights = os.path.join(folder, "adapter_model.safetensors")
        if not (os.path.isfile(os.path.join(folder, "adapter_config.json")) and os.path.isfile(weights)):
            raise AdapterError(
                f"{folder!r} is not a LoRA adapter folder (needs adapter_config.json and adapter_model.safetensors); "
                f"pass the path TransformersModel.save(...) returned for a model with an adapter"
            )
        config = PeftConfig.from_pretrained(folder)
        if not isinstance(config, LoraConfig):
            raise AdapterError(f"{folder!r} holds a {type(config).__name__}; only LoRA adapters are supported")
        self._set_adapter(adapter_name, config, load_file(weights))
        self._adapter_paths[adapter_name] = os.path.realpath(folder)

    @remote_function(dispatch="all", lazy_collect=True)
    def receive_weights(self, state_dict_or_model: Any = None, adapter_name: Any = DEFAULT_ADAPTER,
                        peft_config: Any = None, *, base_sync_done: bool | None = None) -> None:
        """Take new weights: in this process (from a model or a state dict), or from a checkpoint-engine sync.

        In-process form, ``receive_weights(model_or_state_dict, adapter_name='default', peft_config=None)``:
            a ``TransformersModel`` (its active adapter is copied, or all its weights when it has none), or a state
            dict: LoRA keys as ``get_state_dict`` returns them (give ``peft_config`` unless the adapter exists here
            already), or full model keys.

        Engine form, ``receive_weights(base_sync_done=False, peft_config=None)`` (what ``CheckpointEngineManager``
        calls; a bool first argument means the same): reads the weights the trainer sends. With ``peft_config``
        (a ``LoraConfig`` dict) they are LoRA weights: they fill the adapter ``'twinkle_lora'``, which ``sample``
        then uses by default; without it they are base weights, loaded into the model (``.base_layer`` names map
        onto a model without adapters), and the synced adapter is dropped as the default.

        Raises:
            AdapterError: LoRA weights for a new adapter without ``peft_config``.
            CheckpointError: synced base weights of which none fit this model.
        """
        if state_dict_or_model is None or isinstance(state_dict_or_model, bool) or base_sync_done is not None:
            if isinstance(state_dict_or_model, bool):
                base_sync_done = state_dict_or_model
                if peft_config is None and not isinstance(adapter_name, str):
                    peft_config = adapter_name  # receive_weights(base_sync_done, peft_config), as upstream calls it
            self._receive_from_engine(bool(base_sync_done), peft_config)
            return
        source = state_dict_or_model
        if hasattr(source, "get_state_dict") and hasattr(source, "model"):
            group_name = getattr(source, "active_group", "") if getattr(source, "_is_peft", False) else ""
            state = source.get_state_dict(adapter_name=group_name or None)
            if group_name:
                peft_config = source.model.peft_config[group_name]
        elif isinstance(source, Mapping):
            state = dict(source)
        else:
            raise ConfigError(
                f"receive_weights takes a TransformersModel or a state dict, got {type(source).__name__}"
            )
        if any("lora_" in k for k in state):
            if peft_config is None and not (self._is_peft and adapter_name in self.model.peft_config):
                raise AdapterError(
                    f"LoRA weights for a new adapter {adapter_name!r}: pass peft_config= (the LoraConfig) too"
                )
            config = peft_config if peft_config is not None else self.model.peft_config[adapter_name]
            self._set_adapter(adapter_name, config, state)
        else:
            target = self.model.get_base_model() if self._is_peft else self.model
            missing, unexpected = target.load_state_dict(
                {k.removeprefix("base_model.model."): v for k, v in state.items()}, strict=False
            )
            if unexpected or (missing and len(missing) == len(target.state_dict())):
                raise ConfigError(
                    f"receive_weights: the state dict does not fit this model (unexpected keys: {unexpected[:3]}, "
                    f"missing: {len(missing)})"
                )
        self._adapter_paths.pop(adapter_name, None)

    def _receive_from_engine(self, base_sync_done: bool, peft_config: Any) -> None:
        engine = self.get_checkpoint_engine()

        async def drain() -> dict[str, torch.Tensor]:
            # the engine yields views into its reused bucket: clone each before the next bucket arrives
            return {name: tensor.clone() async for name, tensor in engine.receive_weights()}

        weights = run_coroutine(drain())
        if peft_config is not None:
            from peft import LoraConfig

            config = self._lora_config(peft_config, LoraConfig)
            state = {name if name.startswith("base_model.model.") else "base_model.model." + name: t
                     for name, t in weights.items()}
            self._set_adapter(SYNCED_ADAPTER, config, state)
            self._synced_adapter = SYNCED_ADAPTER
            self._adapter_paths.pop(SYNCED_ADAPTER, None)
            return
        target = self.model.get_base_model() if self._is_peft else self.model
        target_keys = frozenset(target.state_dict())
        mapped, skipped = {}, []
        for name, tensor in weights.items():
            if is_lora_key(name):
                continue
            key = match_target_key(name if self._is_peft else strip_base_layer(name), target_keys)
            if key is None:
                skipped.append(name)
            else:
                mapped[key] = tensor
        if not mapped:
            raise CheckpointError(
                f"the synced weights fit no parameter of {self.model_id!r} (e.g. {sorted(weights)[:3]}); do the "
                f"trainer and the sampler load the same model?"
            )
        if skipped:
            logger.warning("receive_weights: %d synced weights have no place in this model (e.g. %s)", len(skipped),
                           skipped[:3])
        target.load_state_dict(mapped, strict=False)
        self._synced_adapter = None  # a base sync drops the synced LoRA as the default (as vLLM's cache)

    @staticmethod
    def _lora_config(peft_config: Any, config_cls: type) -> Any:
        if isinstance(peft_config, config_cls):
            return peft_config
        import dataclasses

        fields = {f.name for f in dataclasses.fields(config_cls)}
        values = {k: v for k, v in dict(peft_config).items() if k in fields and k != "peft_type"}
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = set(values["target_modules"])
        return config_cls(**values)

    def _set_adapter(self, adapter_name: str, config: Any, state: dict[str, torch.Tensor]) -> None:
        import copy
        import warnings

        from peft import get_peft_model, set_peft_model_state_dict

        config = copy.deepcopy(config)
        config.inference_mode = True
        if not self._is_peft:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
                self.model = get_peft_model(self.model, config, adapter_name=adapter_name)
        elif adapter_name not in self.model.peft_config:
            self.model.add_adapter(adapter_name, config)
        result = set_peft_model_state_dict(self.model, state, adapter_name=adapter_name)
        loaded_missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and f".{adapter_name}." in k]
        if loaded_missing:
            raise AdapterError(
                f"adapter {adapter_name!r}: {len(loaded_missing)} LoRA weights missing from the given weights "
                f"(e.g. {loaded_missing[0]}); was it saved from a model with the same LoRA config?"
            )
        self.model.to(self.device).eval()
        self.model.set_adapter(adapter_name)

    # ------------------------------------------------------------------ sampling

    def _prompt(self, item: Any, index: int) -> tuple[list[int], dict[str, Any]]:
        """The prompt's ids and its feature (the input's keys kept: ``messages``, ``user_data``, ...)."""
        if not isinstance(item, Mapping):
            raise DataError(
                f"input {index} is neither an InputFeature (a dict with input_ids) nor a Trajectory (a dict with "
                f"messages): got {type(item).__name__}"
            )
        if not is_trajectory(item):
            if "input_ids" not in item:
                raise DataError(f"input {index}: input_embedding inputs are not supported by TorchSampler; pass "
                                f"input_ids")
            ids = _as_id_list(item["input_ids"], f"input {index}")
            feature = self.prompt_feature(item, None)
        elif "messages" in item:
            if self.template is None:
                raise TemplateError(
                    f"input {index} is a Trajectory (has 'messages'): call sampler.set_template('Template') first, "
                    f"or pass encoded InputFeatures (dicts with input_ids)"
                )
            try:
                encoded = self.encode_trajectory(item)
            except TemplateError as exc:
                raise DataError(f"input {index}: {exc}") from None
            ids = _as_id_list(encoded["input_ids"], f"input {index}")
            feature = self.prompt_feature(item, encoded)
        else:
            raise DataError(
                f"input {index} is neither an InputFeature (a dict with input_ids) nor a Trajectory (a dict with "
                f"messages): got keys {sorted(item)}"
            )
        if not ids:
            raise DataError(f"input {index} has an empty prompt (no input_ids); give at least one token to sample from")
        return ids, feature

    def _select_adapter(self, adapter_name: str, adapter_path: str | None, use_base_model: bool) -> str | None:
        """The adapter to sample with, None for the base model (see ``sample``)."""
        if use_base_model:
            return None
        if adapter_path is not None:
            name = adapter_name or DEFAULT_ADAPTER
            if self._adapter_paths.get(name) != os.path.realpath(str(adapter_path)):
                self.load_adapter(adapter_path, adapter_name=name)
            return name
        if adapter_name:
            if not (self._is_peft and adapter_name in self.model.peft_config):
                loaded = sorted(self.model.peft_config) if self._is_peft else []
                raise AdapterError(
                    f"no adapter named {adapter_name!r} in the sampler (loaded: {loaded}); call "
                    f"load_adapter(path, adapter_name={adapter_name!r}) or receive_weights(model) first"
                )
            return adapter_name
        if self._synced_adapter is not None:
            return self._synced_adapter
        if self._is_peft:
            active = self.model.active_adapter
            active = active if isinstance(active, str) else active[0]
            # the synced adapter after a base sync is stale (its base moved): sample the base, as vLLM does
            return None if active == SYNCED_ADAPTER else active
        return None

    @remote_function(dispatch="slice_dp", collect="flatten")
    def sample(
        self,
        inputs: Any,
        sampling_params: SamplingParams | Mapping | None = None,
        adapter_name: str = "",
        adapter_path: str | None = None,
        *,
        num_samples: int | None = None,
        use_base_model: bool = False,
        return_encoded: bool = False,
    ) -> list[SampleResponse]:
        """Sample completions: one ``SampleResponse`` per input, in input order, each with ``num_samples`` sequences.

        Args:
            inputs: InputFeatures (dicts with ``input_ids``) or Trajectories (dicts with ``messages``, encoded with
                the template as a generation prompt); one item or a list.
            sampling_params: ``SamplingParams`` or a dict of its fields (``SamplingParams.from_dict``).
            adapter_name: a LoRA adapter loaded here to sample with.
            adapter_path: load this adapter folder first (as ``load_adapter``) unless it is the one loaded.
            num_samples: overrides ``sampling_params.num_samples``.
            use_base_model: sample with no adapter at all.
            return_encoded: accepted for vLLMSampler scripts; ignored.

        Without ``adapter_path``/``adapter_name`` the adapter of the last LoRA sync is used, else the active one
        (the base model when there is none).

        Each ``SampledSequence`` has ``tokens`` (completion ids, a final EOS included), ``logprobs`` (when
        ``sampling_params.logprobs`` is set: per token ``[(sampled, logprob), *top-k]``, see the module
        docstring for the distribution), ``decoded`` (special tokens skipped; cut before a matched stop string),
        ``stop_reason`` (``'stop'``: EOS, a stop id or a stop string; ``'length'``: ``max_tokens`` or the model's
        limit) and ``new_input_feature``: a deep copy of the prompt's feature (every key of the input kept, e.g.
        ``messages`` and ``user_data``) with the token fields replaced by prompt + completion (``labels`` rolled
        left by one as the template makes them, so -100 on every prompt position but the last, whose label is the
        first completion token; ``completion_mask``) and, when it has ``messages``, the reply appended as an
        assistant message: what the rewards score.

        ``prompt_logprobs`` (a float per prompt token, None first) and ``topk_prompt_logprobs`` (per token the k
        best ``(token, logprob)``, k = ``prompt_logprobs`` or ``logprobs``) come back when
        ``sampling_params.prompt_logprobs`` is set or ``max_tokens == 0``. With ``max_tokens=0`` each input gets
        ``num_samples`` empty sequences whose ``new_input_feature`` is the prompt.

        Raises:
            TemplateError: a Trajectory input before ``set_template``.
            DataError: an empty prompt, or an input that is neither kind.
        """
        if sampling_params is None:
            params = SamplingParams()
        elif isinstance(sampling_params, Mapping):
            params = SamplingParams.from_dict(sampling_params)
        else:
            params = copy.copy(sampling_params)
        if num_samples is not None:
            params.num_samples = num_samples
            params.__post_init__()
        items = [inputs] if isinstance(inputs, Mapping) else list(inputs)
        prompts = [self._prompt(item, i) for i, item in enumerate(items)]  # validate all before any work
        adapter = self._select_adapter(adapter_name, adapter_path, use_base_model)
        if adapter is not None:
            self.model.set_adapter(adapter)
        if params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed)
        else:
            generator = self._generator
        responses = []
        base_only = self.model.disable_adapter() if adapter is None and self._is_peft else contextlib.nullcontext()
        with torch.no_grad(), base_only:
            for ids, feature in prompts:
                response = SampleResponse(prompt_token_ids=list(ids))
                if params.prompt_logprobs is not None or params.max_tokens == 0:
                    response.prompt_logprobs, response.topk_prompt_logprobs = self._prompt_logprobs(ids, params)
                if params.max_tokens == 0:
                    response.sequences = [
                        SampledSequence(stop_reason="length", tokens=[], decoded="",
                                        new_input_feature=complete_feature(feature, ids, [], None))
                        for _ in range(params.num_samples)
                    ]
                else:
                    response.sequences = self._generate(ids, feature, params, generator)
                responses.append(response)
        return responses

    def _forward(self, input_ids: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        cache_kw = self._cache_kw
        out = self.model(input_ids=input_ids, **{cache_kw: past}, use_cache=True)
        return out.logits[:, -1, :].float(), getattr(out, cache_kw, None) or out.past_key_values

    @staticmethod
    def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
        # seen: [rows, vocab] bool. Positive logits are divided by the penalty, negative ones multiplied (CTRL).
        if penalty == 1.0:
            return logits
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        return torch.where(seen, penalised, logits)

    @staticmethod
    def _filter(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
        if top_k > 0 and top_k < scores.shape[-1]:
            kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if top_p < 1.0:
            sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
            probs = torch.softmax(sorted_scores, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
            drop_sorted = before >= top_p  # keep the smallest set reaching top_p (always the first token)
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        return scores

    def _max_new(self, prompt_len: int, params: SamplingParams) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        room = (limit - prompt_len) if limit else None
        if room is not None and room <= 0:
            raise DataError(
                f"the prompt has {prompt_len} tokens, at or above the model's limit of {limit}; shorten the prompt"
            )
        if params.max_tokens is None:
            return room if room is not None else 2048
        return min(params.max_tokens, room) if room is not None else params.max_tokens

    @staticmethod
    def _top(logp: torch.Tensor, chosen: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
        rows = []
        chosen_lp = logp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()
        if k:
            top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
            values, indices = top.values.tolist(), top.indices.tolist()
        for r, token in enumerate(chosen.tolist()):
            entry = [(int(token), float(chosen_lp[r]))]
            if k:
                entry += [(int(i), float(v)) for i, v in zip(indices[r], values[r], strict=True) if v != float("-inf")]
            rows.append(entry)
        return rows

    def _generate(self, prompt: list[int], feature: dict[str, Any], params: SamplingParams,
                  generator: torch.Generator) -> list[SampledSequence]:
        n = params.num_samples
        max_new = self._max_new(len(prompt), params)
        stops = params.stop_strings
        stop_ids = self.eos_ids | set(params.stop_token_ids)
        want_logprobs = params.logprobs is not None
        greedy = params.temperature == 0
        vocab = self.model.config.vocab_size
        prompt_t = torch.tensor([prompt] * n, dtype=torch.long, device=self.device)
        seen = torch.zeros(n, vocab, dtype=torch.bool, device=self.device)
        seen.scatter_(1, prompt_t.clamp(max=vocab - 1), True)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        cuts: list[int | None] = [None] * n  # where a stop string starts in the decoded text
        logits, past = self._forward(prompt_t, None)
        for _ in range(max_new):
            scores = self._penalise(logits, seen, params.repetition_penalty)
            scores = scores if greedy or params.temperature == 1.0 else scores / params.temperature
            scores = self._filter(scores, params.top_k, params.top_p)
            logp = torch.log_softmax(scores, dim=-1)
            if greedy:
                chosen = torch.argmax(scores, dim=-1)
            else:
                chosen = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
            top = self._top(logp, chosen, params.logprobs or 0) if want_logprobs else None
            for r, token in enumerate(chosen.tolist()):
                if reasons[r] is not None:
                    continue
                tokens[r].append(token)
                if top is not None:
                    logprobs[r].append(top[r])
                if token in stop_ids:
                    reasons[r] = "stop"
                elif stops:
                    text = cast(str, self.tokenizer.decode(tokens[r], skip_special_tokens=True))  # one sequence
                    hits = [text.find(s) for s in stops if s in text]
                    if hits:
                        reasons[r], cuts[r] = "stop", min(hits)
            if all(reason is not None for reason in reasons):
                break
            seen.scatter_(1, chosen.clamp(max=vocab - 1).unsqueeze(-1), True)
            logits, past = self._forward(chosen.unsqueeze(-1), past)
        sequences = []
        for r in range(n):
            text = cast(str, self.tokenizer.decode(tokens[r], skip_special_tokens=True))  # one sequence: a str
            if cuts[r] is not None:
                text = text[: cuts[r]]
            sequences.append(
                SampledSequence(
                    stop_reason=reasons[r] or "length",
                    tokens=tokens[r],
                    logprobs=logprobs[r] if want_logprobs else None,
                    decoded=text,
                    new_input_feature=complete_feature(feature, prompt, tokens[r], text),
                )
            )
        return sequences

    def _prompt_logprobs(self, prompt: list[int], params: SamplingParams) -> tuple[list[Any], list[Any]]:
        """Per prompt token: its log-prob (None for the first) and the k best ``(token, logprob)``, descending."""
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        logits = self.model(input_ids=ids, use_cache=False).logits[0].float()
        temperature = params.temperature if params.temperature > 0 else 1.0
        logp = torch.log_softmax(logits[:-1] / temperature, dim=-1)
        k = params.prompt_logprobs if params.prompt_logprobs is not None else (params.logprobs or 0)
        rows = self._top(logp, ids[0, 1:], k)
        return [None, *[row[0][1] for row in rows]], [None, *[row[1:] for row in rows]]
