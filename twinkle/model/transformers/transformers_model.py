"""``TransformersModel``: a Hugging Face causal LM with LoRA (PEFT) or full fine-tuning, one process or torchrun.

Gradient accumulation (our choice, documented in TWINKLE-API.md): with ``gradient_accumulation_steps=gas`` the
optimizer steps once after every ``gas`` micro-batches (after micro-batches gas, 2·gas, ...);
``clip_grad_and_step`` is a no-op in between. Upstream steps after micro-batch 1+gas first; we don't.

Sum-reduced losses (``CrossEntropyLoss(reduction='sum')``, the default) are divided by the *global* number of
labelled tokens at the optimizer step (all-reduced over data ranks), so dp=N with a global batch B gives the same
update as one process with batch B.

Padding-free by default (``_packing``): a padded batch is packed into one row before the forward (attention per
sample, logits only where a label is) whenever the loss and metrics only sum over labelled tokens, the default
cross entropy included; ``padding_free=False`` / ``labelled_logits_only=False`` turn the two levers off.

Mixed precision: ``mixed_precision='bf16'`` (or ``'fp16'``) keeps float32 weights and runs the forward under
``torch.autocast`` on CUDA. On the CPU it falls back to float32 and says so in one info log line.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from twinkle.checkpoint_engine import CheckpointEngineMixin
from twinkle.checkpoint_engine._names import is_lora_key, strip_base_layer, strip_peft_prefix
from twinkle.errors import (
    AdapterError,
    ConfigError,
    OptimizerNotSetError,
    UnknownComponentError,
)
from twinkle.infra import remote_class, remote_function
from twinkle.infra._job_env import stop_if_reached
from twinkle.loss import CrossEntropyLoss, Loss, selective_log_softmax
from twinkle.metric import Accuracy, LossMetric, Metric, TrainMetric
from twinkle.model._hub import resolve_model_dir
from twinkle.model._loading import load_causal_lm, pick_device
from twinkle.model.base import TwinkleModel
from twinkle.model.optimizer_group import OptimizerGroup
from twinkle.model.transformers import _packing, _parallel
from twinkle.model.transformers._checkpointing import CheckpointingMixin
from twinkle.patch import Patch
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.model")

__all__ = ["TransformersModel"]

_MODEL_KEYS = (
    "input_ids", "attention_mask", "position_ids", "inputs_embeds", "pixel_values", "image_grid_thw",
    # padding-free batches (InputProcessor(padding_free=True)): sequence boundaries for the attention kernels
    "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
    "logits_to_keep",  # padding-free batches: the positions that carry a label
)
_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None, "fp32": None, None: None}


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _check_task(task: str | None) -> None:
    """Upstream's ``task=``: ``'causal_lm'`` (the default) runs here; the other two are not built yet."""
    if task in (None, "causal_lm"):
        return
    if task in ("embedding", "fused_lm_ce"):
        from twinkle.errors import NotBuiltError

        raise NotBuiltError(
            f"forward(task={task!r}) is not built in Twinkle Commons (upstream: "
            f"{'last-token L2-normalised embeddings' if task == 'embedding' else 'the fused lm-head cross entropy'}); "
            f"use task='causal_lm'"
        )
    raise ConfigError(f"task must be 'causal_lm', 'fused_lm_ce' or 'embedding', got {task!r}")


def _lookup(name: str, modules: list[Any], base: type, kind: str) -> type:
    for module in modules:
        cls = getattr(module, name, None)
        if inspect.isclass(cls) and issubclass(cls, base) and cls is not base:
            return cls
    known = sorted(
        {
            n
            for m in modules
            for n in dir(m)
            if not n.startswith("_") and inspect.isclass(getattr(m, n)) and issubclass(getattr(m, n), base)
            and getattr(m, n) is not base
        }
    )
    raise UnknownComponentError(f"unknown {kind} {name!r}; known names: {', '.join(known)} (or pass a class)")


@remote_class()
class TransformersModel(CheckpointingMixin, TwinkleModel, CheckpointEngineMixin):
    """A causal LM loaded through ``transformers``, trained with LoRA adapters or in full.

    Args:
        model_cls: the ``transformers`` class (or its name); default ``config.architectures[0]``, else
            ``AutoModelForCausalLM``.
        model_id: ``ms://org/name``, ``hf://org/name``, a bare id (ModelScope) or a local folder.
        config: a ``PretrainedConfig``; with no ``model_id`` the model is built from it with random weights.
        device_mesh: the data-parallel layout (dp and/or fsdp); injected from ``twinkle.initialize`` when omitted.
        mixed_precision: ``'bf16'``, ``'fp16'`` or ``'no'``; autocast on CUDA, float32 on the CPU.
        strategy: ``'accelerate'`` (DDP over dp; FSDP2 when the mesh has fsdp) or ``'native_fsdp'`` (FSDP2 over
            all ranks as one axis); ``model.strategy`` holds the object (``twinkle.model.transformers.strategy``).
        ddp_config: keyword arguments of ``DistributedDataParallel``.
        fsdp_config: keyword arguments of ``fully_shard`` (``reshard_after_forward``, ``mp_policy``, ...).
        grad_scaler_config: keyword arguments of ``torch.amp.GradScaler`` (fp16 only).
        memory_efficient_init: load with ``low_cpu_mem_usage`` (meta-device init, then weights).
        padding_free: pack each padded batch into one row (attention per sample) when the loss and metrics are
            token-level and the attention implementation keeps samples apart (``sdpa`` is switched to
            ``twinkle_varlen``; ``flash_attention_*`` work as they are). Outputs keep the padded ``[B, W]`` layout.
        labelled_logits_only: with packing, compute logits only at labelled positions (not when
            ``return_logits=True``).
        **hf_kw: passed to ``from_pretrained``; ``gradient_checkpointing=False`` turns checkpointing off
            (default on, as upstream).

    Raises:
        ModelNotFoundError: ``model_id`` cannot be resolved to a folder.
        UnsupportedParallelismError: the mesh uses tp/pp/cp/ep. ``ulysses_size > 1`` runs Ulysses sequence
            parallelism (``_ulysses.py``).
    """

    def __init__(
        self,
        model_cls: Any = None,
        model_id: str | None = None,
        config: Any = None,
        device_mesh: DeviceMesh | None = None,
        mixed_precision: str | None = "bf16",
        strategy: Any = "accelerate",
        ddp_config: dict[str, Any] | None = None,
        fsdp_config: dict[str, Any] | None = None,
        grad_scaler_config: dict[str, Any] | None = None,
        memory_efficient_init: bool = False,
        padding_free: bool = True,
        labelled_logits_only: bool = True,
        **hf_kw: Any,
    ) -> None:
        from twinkle.model.transformers.strategy import get_strategy

        strategy = get_strategy(strategy, ddp_config, fsdp_config)  # ConfigError on an unknown name
        if mixed_precision not in _PRECISIONS:
            raise ConfigError(f"mixed_precision must be 'bf16', 'fp16' or 'no', got {mixed_precision!r}")
        if model_id is None and config is None:
            raise ConfigError("TransformersModel needs model_id= (a hub id or a local folder) or config=")
        _parallel.check_mesh(device_mesh)
        self.device_mesh = device_mesh
        self.strategy = strategy
        self.ddp_config = ddp_config
        self.fsdp_config = fsdp_config
        self.model_id = model_id
        self.model_dir = resolve_model_dir(model_id) if model_id is not None else None
        self.tokenizer_id = self.model_dir
        self._tokenizer: Any = None

        gradient_checkpointing = hf_kw.pop("gradient_checkpointing", True)
        if self.model_dir is not None and memory_efficient_init:
            hf_kw.setdefault("low_cpu_mem_usage", True)
        self.model = load_causal_lm(self.model_dir, config=config, model_cls=model_cls, **hf_kw)
        # before PEFT and DDP/FSDP wrap it: the attention implementation is read from the config at every forward
        self.padding_free = bool(padding_free) and _packing.enable(self.model)
        self.labelled_logits_only = bool(labelled_logits_only) and (
            "logits_to_keep" in inspect.signature(self.model.forward).parameters
        )

        self.device = pick_device(self.device_mesh)
        self.model.to(self.device)
        self.autocast_dtype = self._pick_autocast(mixed_precision)
        self.scaler = None
        if self.autocast_dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type, **(grad_scaler_config or {}))
        if gradient_checkpointing:
            # non-reentrant: works with frozen inputs (LoRA), DDP and FSDP2 without enable_input_require_grads
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            elif hasattr(self.model, "gradient_checkpointing_enable"):
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(self.model.config, "use_cache"):
            self.model.config.use_cache = False

        self._wrapped: torch.nn.Module | None = None
        self._param_cache: dict[Any, list[tuple[str, torch.nn.Parameter]]] = {}
        self.optimizer_groups: dict[str, OptimizerGroup] = {"": self._new_group("", 1)}
        self.optimizer_group = self.optimizer_groups  # upstream's name; the same dict object
        self.active_group = ""

    # ------------------------------------------------------------------ setup helpers

    def _pick_autocast(self, mixed_precision: str | None) -> torch.dtype | None:
        dtype = _PRECISIONS[mixed_precision]
        if dtype is None:
            return None
        if self.device.type == "cpu":
            logger.info("mixed_precision=%r on the CPU: training in float32", mixed_precision)
            return None
        if dtype is torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            logger.info("this GPU has no bf16: training in float32")
            return None
        return dtype

    def _new_group(self, adapter_name: str, gas: int) -> OptimizerGroup:
        if gas < 1:
            raise ConfigError(f"gradient_accumulation_steps must be >= 1, got {gas}")
        group = OptimizerGroup(adapter_name=adapter_name, gradient_accumulation_steps=gas)
        group.loss = CrossEntropyLoss(reduction="sum")
        group.train_metrics = [LossMetric(self.device_mesh), Accuracy(self.device_mesh), TrainMetric(self.device_mesh)]
        group.eval_metrics = [LossMetric(self.device_mesh), Accuracy(self.device_mesh)]
        return group

    def _group(self, adapter_name: str | None = None) -> OptimizerGroup:
        if adapter_name is None or adapter_name == "":
            if len(self.optimizer_groups) == 1:
                return next(iter(self.optimizer_groups.values()))
            return self.optimizer_groups[self.active_group]
        if adapter_name not in self.optimizer_groups:
            raise AdapterError(
                f"no adapter named {adapter_name!r}; added: {', '.join(repr(n) for n in self.optimizer_groups)}. "
                f"Call add_adapter_to_model({adapter_name!r}, LoraConfig(...)) first"
            )
        return self.optimizer_groups[adapter_name]

    @property
    def _is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    def _activate(self, group: OptimizerGroup) -> None:
        if group.adapter_name and self._is_peft and self.model.active_adapter != group.adapter_name:
            self.model.set_adapter(group.adapter_name)
        if group.adapter_name:
            self.active_group = group.adapter_name

    @property
    def _ulysses(self) -> bool:
        return self.device_mesh is not None and (self.device_mesh.ulysses_size or 1) > 1

    def _module(self) -> torch.nn.Module:
        """The module to call: the DDP wrapper, the FSDP2-sharded model, or the plain model."""
        if self._wrapped is None:
            if self._ulysses and _parallel.needs_wrap(self.device_mesh):
                from twinkle.model.transformers import _ulysses

                _ulysses.build_group(self.device_mesh)
                _ulysses.register(self.model)
            if _parallel.needs_wrap(self.device_mesh):
                if _parallel.uses_fsdp(self.device_mesh, self.strategy):
                    if self.scaler is not None:
                        raise _parallel.UnsupportedParallelismError(
                            "fp16 with a GradScaler is not supported under FSDP2 here; use mixed_precision='bf16'"
                        )
                    self._wrapped = _parallel.wrap_fsdp(self.model, self.device_mesh, self.device, self.fsdp_config)
                else:
                    self._wrapped = _parallel.wrap_ddp(self.model, self.device, self.ddp_config)
            else:
                self._wrapped = self.model
        return self._wrapped

    def _trainable(self, group: OptimizerGroup) -> list[tuple[str, torch.nn.Parameter]]:
        # cached: walking named_parameters() of a large PEFT model costs about a millisecond per call, several
        # times a step; wrapping (FSDP2 swaps parameters) and adding adapters clear the cache
        key = (group.adapter_name, id(self._wrapped))
        cached = self._param_cache.get(key)
        if cached is None:
            cached = self._param_cache[key] = self._collect_trainable(group)
        return cached

    def _collect_trainable(self, group: OptimizerGroup) -> list[tuple[str, torch.nn.Parameter]]:
        params = []
        for name, param in self.model.named_parameters():
            if group.adapter_name:
                tag = f".{group.adapter_name}."
                if not (tag in name and (".lora_" in name or "modules_to_save" in name)):
                    continue
            elif not param.requires_grad:
                continue
            params.append((name, param))
        return params

    # ------------------------------------------------------------------ adapters, patches

    @remote_function(dispatch="all")
    def add_adapter_to_model(
        self, adapter_name: str, config_or_dir: Any, gradient_accumulation_steps: int = 1, **kwargs: Any
    ) -> None:
        """Add a LoRA adapter (a ``peft`` config, or a folder with ``adapter_config.json``) and make it active.

        Raises:
            AdapterError: the config targets no module of this model, or the name is taken.
            ConfigError: called after training started on a data-parallel mesh (adapters must exist before the
                model is wrapped for DDP/FSDP).
        """
        from peft import LoraConfig, PeftConfig, get_peft_model

        if not adapter_name:
            raise AdapterError("adapter_name must be a non-empty string, e.g. 'default'")
        if self._is_peft and adapter_name in self.model.peft_config:
            raise AdapterError(f"an adapter named {adapter_name!r} exists already; pick another name")
        if self._wrapped is not None and (self._wrapped is not self.model or self._is_fsdp()):
            raise ConfigError(
                "add adapters before the first set_optimizer/forward: the model is already wrapped for data "
                "parallelism"
            )
        load_dir = None
        if isinstance(config_or_dir, (str, os.PathLike)):
            load_dir = resolve_model_dir(config_or_dir)
            config = PeftConfig.from_pretrained(load_dir)
            config.inference_mode = False
        else:
            config = config_or_dir
        if isinstance(config, Mapping):
            config = LoraConfig(**config)
        try:
            if self._is_peft:
                self.model.add_adapter(adapter_name, config)
            else:
                with warnings.catch_warnings():
                    # peft probes a property that transformers 5 deprecated; the user can do nothing about it
                    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
                    self.model = get_peft_model(self.model, config, adapter_name=adapter_name)
        except ValueError as exc:
            if "not found in the base model" in str(exc) or "target modules" in str(exc).lower():
                raise AdapterError(
                    f"LoRA config for adapter {adapter_name!r} targets no module of {type(self.model).__name__}: "
                    f"target_modules={getattr(config, 'target_modules', None)!r}. Use 'all-linear' or names of its "
                    f"linear layers (e.g. q_proj, v_proj)"
                ) from exc
            raise
        self.model.to(self.device)
        self.model.set_adapter(adapter_name)
        self._wrapped = None
        self._param_cache.clear()
        group = self._new_group(adapter_name, gradient_accumulation_steps)
        if not self._trainable(group):
            raise AdapterError(f"adapter {adapter_name!r} has no trainable parameters; check its LoraConfig")
        self.optimizer_groups.pop("", None)  # full-parameter training ends once an adapter exists
        self.optimizer_groups[adapter_name] = group
        self.active_group = adapter_name
        if load_dir is not None:
            self.load(load_dir, adapter_name=adapter_name)

    @remote_function(dispatch="all")
    def apply_patch(self, patch_cls: Any, **kwargs: Any) -> None:
        """Apply a ``twinkle.patch.Patch`` (class, instance or name in ``twinkle.patch``) to the model."""
        import twinkle.patch as patches

        if isinstance(patch_cls, str):
            patch_cls = _lookup(patch_cls, [patches], Patch, "patch")
        patch = patch_cls() if isinstance(patch_cls, type) else patch_cls
        replaced = patch(self.model, **kwargs)
        if isinstance(replaced, torch.nn.Module):
            self.model = replaced
            self._wrapped = None
        self._param_cache.clear()

    # ------------------------------------------------------------------ setters

    @remote_function(dispatch="all")
    def set_loss(self, loss_cls: Any, adapter_name: str | None = None, **kwargs: Any) -> None:
        """Use a loss from ``twinkle.loss`` (name), a ``Loss`` subclass, or an instance."""
        import twinkle.loss as losses

        if isinstance(loss_cls, str):
            loss_cls = _lookup(loss_cls, [losses], Loss, "loss")
        self._group(adapter_name).loss = loss_cls(**kwargs) if inspect.isclass(loss_cls) else loss_cls

    @remote_function(dispatch="all")
    def set_optimizer(
        self,
        optimizer_cls: Any = "AdamW",
        adapter_name: str | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.01,
        **kwargs: Any,
    ) -> None:
        """Build the group's optimizer over its trainable parameters, biases and norm weights without decay.

        ``optimizer_cls`` is a ``torch.optim`` name, a class, or a ready optimizer instance (used as is).
        """
        group = self._group(adapter_name)
        self._activate(group)
        self._module()  # FSDP2 replaces parameters: shard before the optimizer captures them
        if isinstance(optimizer_cls, torch.optim.Optimizer):
            group.optimizer = optimizer_cls
            return
        if isinstance(optimizer_cls, str):
            optimizer_cls = _lookup(optimizer_cls, [torch.optim], torch.optim.Optimizer, "optimizer")
        norm_params = {
            id(p)
            for module in self.model.modules()
            if "norm" in type(module).__name__.lower()
            for p in module.parameters(recurse=False)
        }
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, param in self._trainable(group):
            (no_decay if name.endswith("bias") or id(param) in norm_params else decay).append(param)
        if not decay and not no_decay:
            raise AdapterError(f"optimizer group {group.adapter_name!r} has no trainable parameters")
        param_groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        group.optimizer = optimizer_cls([g for g in param_groups if g["params"]], lr=lr, **kwargs)

    @remote_function(dispatch="all")
    def set_lr_scheduler(self, scheduler_cls: Any, adapter_name: str | None = None, **kwargs: Any) -> None:
        """A scheduler from ``torch.optim.lr_scheduler`` or ``twinkle.module.scheduler`` (by name), or a class.

        Raises:
            OptimizerNotSetError: before ``set_optimizer``.
            UnknownComponentError: an unknown name (the message lists the known ones).
        """
        from torch.optim import lr_scheduler

        import twinkle.module.scheduler as ours

        group = self._group(adapter_name)
        if group.optimizer is None:
            raise OptimizerNotSetError("call set_optimizer(...) before set_lr_scheduler(...)")
        if isinstance(scheduler_cls, str):
            scheduler_cls = _lookup(scheduler_cls, [lr_scheduler, ours], lr_scheduler.LRScheduler, "lr scheduler")
        group.lr_scheduler = scheduler_cls(group.optimizer, **kwargs)

    @remote_function(dispatch="all")
    def set_template(self, template_cls: Any = "Template", adapter_name: str | None = None, **kwargs: Any) -> None:
        """A ``twinkle.template`` template for Trajectory inputs; always built on this model's tokenizer."""
        import twinkle.template as templates
        from twinkle.template import Template

        kwargs["model_id"] = self.tokenizer_id
        if isinstance(template_cls, str):
            template_cls = _lookup(template_cls, [templates], Template, "template") if template_cls != "Template" else (
                Template
            )
        self._group(adapter_name).template = template_cls(**kwargs) if inspect.isclass(template_cls) else template_cls

    @remote_function(dispatch="all")
    def set_processor(self, processor_cls: Any = "InputProcessor", adapter_name: str | None = None, **kwargs: Any):
        """The ``twinkle.processor`` input processor that collates encoded rows into tensors."""
        import twinkle.processor as processors
        from twinkle.processor import InputProcessor

        kwargs.setdefault("device_mesh", self.device_mesh)
        if isinstance(processor_cls, str):
            processor_cls = (
                InputProcessor if processor_cls == "InputProcessor"
                else _lookup(processor_cls, [processors], InputProcessor, "processor")
            )
        self._group(adapter_name).processor = (
            processor_cls(**kwargs) if inspect.isclass(processor_cls) else processor_cls
        )

    @remote_function(dispatch="all")
    def add_metric(self, metric_cls: Any, is_training: bool | None = None, adapter_name: str | None = None, **kw):
        """Add a metric (``twinkle.metric`` name, class or instance) to training, evaluation, or both (None)."""
        import twinkle.metric as metrics

        if isinstance(metric_cls, str):
            metric_cls = _lookup(metric_cls, [metrics], Metric, "metric")
        group = self._group(adapter_name)
        for training, bucket in ((True, group.train_metrics), (False, group.eval_metrics)):
            if is_training is None or is_training == training:
                # upstream builds cls(device_mesh=, process_group=, **kw): DPOMetric(beta=...) and friends
                bucket.append(
                    metric_cls(device_mesh=self.device_mesh, process_group=None, **kw)
                    if isinstance(metric_cls, type) else metric_cls
                )

    # ------------------------------------------------------------------ inputs

    def _collate(self, inputs: Any, group: OptimizerGroup) -> dict[str, Any]:
        if isinstance(inputs, Mapping):
            batch = dict(inputs)
        else:
            rows = list(inputs)
            if not rows:
                raise ConfigError("forward got an empty batch")
            if all(isinstance(r, Mapping) and "input_ids" not in r and "messages" in r for r in rows):
                if group.template is None:
                    self.set_template("Template", adapter_name=group.adapter_name or None)
                rows = group.template.batch_encode(rows)
            if group.processor is None:
                self.set_processor("InputProcessor", adapter_name=group.adapter_name or None)
            batch = dict(group.processor(rows))
        out = {}
        for key, value in batch.items():
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            elif isinstance(value, list) and value and isinstance(value[0], (int, float)):
                value = torch.tensor(value)
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, non_blocking=True)
                if value.dim() == 1 and key in ("input_ids", "attention_mask", "position_ids", "labels"):
                    value = value.unsqueeze(0)
            out[key] = value
        if self._ulysses and _parallel.needs_wrap(self.device_mesh):
            from twinkle.model.transformers import _ulysses

            self._module()  # the sequence-parallel group exists before the first shard
            out = _ulysses.shard_batch(out)
        return out

    def _run(self, module: torch.nn.Module, batch: dict[str, Any], temperature: float, loss: Any) -> dict[str, Any]:
        model_inputs = {k: batch[k] for k in _MODEL_KEYS if batch.get(k) is not None}
        if "position_ids" in model_inputs and "attention_mask" in model_inputs:
            # padding positions carry -1; rotary embeddings only need a finite value there
            model_inputs["position_ids"] = model_inputs["position_ids"].clamp(min=0)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            result = module(**model_inputs, use_cache=False)
        logits = result.logits
        outputs: dict[str, Any] = {"logits": logits}
        labels = batch.get("labels")
        if labels is not None and getattr(loss, "require_logps", True) and labels.dtype in (torch.long, torch.int):
            scaled = logits if temperature == 1.0 else logits / temperature
            outputs["logps"] = selective_log_softmax(scaled, labels)
        if getattr(loss, "require_entropy", False):
            logp_all = torch.log_softmax(logits.float(), dim=-1)
            outputs["entropy"] = -(logp_all.exp() * logp_all).sum(-1)
            outputs["entropies"] = outputs["entropy"]  # upstream's key
        return outputs

    def _pack(self, batch: dict[str, Any], group: OptimizerGroup, training: bool, return_logits: bool):
        """The packed batch when padding-free training applies to this forward, else None."""
        if not self.padding_free:
            return None
        metrics = group.train_metrics if training else group.eval_metrics
        if not (_packing.token_level(group.loss) and all(_packing.token_level(m) for m in metrics)):
            return None  # a row-level loss or metric (DPO, GRPO, ...) needs the padded rows
        compact = self.labelled_logits_only and not return_logits and not getattr(group.loss, "require_entropy", False)
        return _packing.pack(batch, labelled_logits_only=compact)

    def _forward_batch(self, module, batch, group, training: bool, temperature: float, return_logits: bool):
        """Run the model on ``batch`` (packed when it pays); returns (loss view of the batch, outputs, public)."""
        packed = self._pack(batch, group, training, return_logits)
        if packed is None:
            outputs = self._run(module, batch, temperature, group.loss)
            keep = return_logits or getattr(group.loss, "require_logits", False)
            return batch, outputs, self._public(outputs, keep)
        outputs = self._run(module, packed.batch, temperature, group.loss)
        # the caller sees the padded [B, W] layout as before; logits only when asked for (they may be partial)
        public = self._public(outputs, return_logits)
        return packed.batch, outputs, packed.unpack_outputs(public)

    @staticmethod
    def _public(outputs: dict[str, Any], keep_logits: bool) -> dict[str, Any]:
        public = {}
        for key, value in outputs.items():
            if key == "logits" and not keep_logits:
                continue
            public[key] = value.detach() if isinstance(value, torch.Tensor) else value
        return public

    # ------------------------------------------------------------------ training step

    @remote_function(dispatch="slice_dp", collect="flatten")
    def forward(
        self,
        inputs: Any,
        adapter_name: str | None = None,
        temperature: float = 1.0,
        return_logits: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Training forward over a batch: encoded rows (what the DataLoader yields), Trajectories, or a dict.

        Returns ``logps`` ``[batch, seq]`` (log-probability of each label, 0 where unlabelled), plus ``logits``
        when ``return_logits`` or the loss needs them (on a packed batch only with ``return_logits``: the loss then
        saw logits of the labelled positions alone).
        """
        _check_task(kwargs.get("task"))
        group = self._group(adapter_name)
        self._activate(group)
        module = self._module()
        batch = self._collate(inputs, group)
        self.model.train()
        # the backward that follows completes a window when this is the gas-th micro-batch
        _parallel.set_grad_sync(module, (group.cur_step + 1) % group.gradient_accumulation_steps == 0)
        loss_batch, outputs, public = self._forward_batch(module, batch, group, True, temperature, return_logits)
        group.last_forward = (loss_batch, outputs, True)
        return public

    @remote_function(dispatch="slice_dp", collect="flatten")
    def forward_only(
        self,
        inputs: Any,
        adapter_name: str | None = None,
        temperature: float = 1.0,
        return_logits: bool = False,
        disable_lora: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Evaluation forward without gradients; ``disable_lora=True`` runs the base model (a DPO reference)."""
        import contextlib

        _check_task(kwargs.get("task"))
        group = self._group(adapter_name)
        self._activate(group)
        module = self._module()
        batch = self._collate(inputs, group)
        was_training = self.model.training
        self.model.eval()
        ctx = self.model.disable_adapter() if disable_lora and self._is_peft else contextlib.nullcontext()
        try:
            with torch.no_grad(), ctx:
                loss_batch, outputs, public = self._forward_batch(
                    module, batch, group, False, temperature, return_logits
                )
        finally:
            self.model.train(was_training)
        group.last_forward = (loss_batch, outputs, False)
        return public

    @remote_function(dispatch="all", collect="mean")
    def calculate_loss(self, adapter_name: str | None = None, **kwargs: Any) -> float:
        """Apply the group's loss to the last forward; returns its value (sum losses: the local sum)."""
        return float(self._calculate_loss(self._group(adapter_name), **kwargs))

    def _calculate_loss(self, group: OptimizerGroup, **kwargs: Any) -> torch.Tensor:
        # no host read in here: a .item() before backward would leave the GPU idle while backward is launched
        if group.last_forward is None:
            raise ConfigError("calculate_loss needs a forward(...) or forward_only(...) first")
        batch, outputs, training = group.last_forward
        result = group.loss(batch, outputs, **kwargs)
        loss = result["loss"]
        tokens = result.get("num_tokens", 0)
        tokens = 0 if tokens is None else tokens
        metrics = group.train_metrics if training else group.eval_metrics
        for metric in metrics:
            # the forward's extra keywords (ref_outputs, old_logps, advantages, ...) reach the metrics, as upstream
            extra = {k: v for k, v in kwargs.items() if k not in ("loss", "num_tokens")}
            metric.accumulate(batch, outputs, loss=loss.detach(), num_tokens=tokens, **extra)
        if training:
            group.pending_loss, group.pending_loss_tokens = loss, tokens
            rows = batch.get("num_rows")  # a packed batch is one row holding num_rows samples
            if rows is None:
                rows = batch["input_ids"].shape[0] if isinstance(batch.get("input_ids"), torch.Tensor) else 0
            group.pending_samples += rows
        else:
            group.last_forward = None
        return loss.detach()

    @remote_function(dispatch="all")
    def backward(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        """Back-propagate the last training loss and count the micro-batch (``cur_step += 1``)."""
        group = self._group(adapter_name)
        if group.pending_loss is None:
            raise ConfigError("backward needs forward(...) and calculate_loss(...) first")
        loss = group.pending_loss
        tokens = group.pending_loss_tokens
        if isinstance(tokens, torch.Tensor) or tokens > 0:
            group.pending_tokens = group.pending_tokens + tokens
        else:
            loss = loss / group.gradient_accumulation_steps  # mean losses: average over the window
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()
        group.pending_loss, group.last_forward = None, None
        group.cur_step += 1
        for metric in group.train_metrics:
            metric.accumulate(
                None, None, cur_step=group.cur_step, gradient_accumulation_steps=group.gradient_accumulation_steps
            )

    @remote_function(dispatch="slice_dp", collect="mean")
    def forward_backward(self, inputs: Any, adapter_name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """``forward`` + ``calculate_loss(**kwargs)`` + ``backward``; returns the outputs plus ``loss``.

        ``loss`` is a detached 0-dim tensor (the local loss value), so the call never waits for the GPU.
        """
        fwd_keys = ("temperature", "return_logits", "task")
        fwd_kw = {k: kwargs.pop(k) for k in fwd_keys if k in kwargs}
        outputs = self.forward(inputs=inputs, adapter_name=adapter_name, **fwd_kw)
        loss = self._calculate_loss(self._group(adapter_name), **kwargs)
        self.backward(adapter_name=adapter_name)
        # a 0-dim tensor, not a float: reading it here would make the GPU wait while the optimizer step is
        # launched; float(outputs['loss']) when you need the number
        outputs["loss"] = loss
        return outputs

    def _finalize_grads(self, group: OptimizerGroup) -> None:
        """Once per optimizer step: divide gradients of sum losses by the global token count."""
        if group.grads_finalized_at == group.cur_step:
            return
        group.grads_finalized_at = group.cur_step
        world = 1
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.stack([torch.as_tensor(group.pending_tokens, dtype=torch.float64, device=self.device),
                             torch.tensor(float(group.pending_samples), dtype=torch.float64, device=self.device)])
            dist.all_reduce(t)
            counts = t.tolist()
            # DDP and FSDP2 average gradients over the data ranks (times the Ulysses group, whose ranks hold
            # slices of the same rows); undo that to get the global sum
            sp = (self.device_mesh.ulysses_size or 1) if self.device_mesh is not None else 1
            world = self.device_mesh.data_world_size * sp if self.device_mesh is not None else dist.get_world_size()
            counts[1] /= sp  # every rank of a Ulysses group counted the same rows
        else:
            counts = [float(group.pending_tokens), float(group.pending_samples)]
        tokens, samples = counts
        group.consumed_train_samples += int(samples)
        group.pending_tokens, group.pending_samples = 0, 0
        if tokens > 0:
            factor = world / tokens
            grads = [p.grad for _, p in self._trainable(group) if p.grad is not None]
            if self._is_fsdp():
                for grad in grads:
                    grad.mul_(factor)
            elif grads:
                torch._foreach_mul_(grads, factor)  # one fused call instead of one kernel per parameter

    @remote_function(dispatch="all", collect="first")
    def clip_grad_norm(
        self, max_grad_norm: float = 1.0, norm_type: float = 2.0, adapter_name: str | None = None, **kwargs: Any
    ) -> float | None:
        """Clip the gradients of the group (once per optimizer step) and return their norm before clipping."""
        norm = self._clip(self._group(adapter_name), max_grad_norm, norm_type)
        return None if norm is None else float(norm)

    def _clip(self, group: OptimizerGroup, max_grad_norm: float, norm_type: float) -> Any:
        if not group.claim("clip"):
            return group.last_grad_norm
        self._finalize_grads(group)
        if self.scaler is not None and group.optimizer is not None:
            self.scaler.unscale_(group.optimizer)
        params = [p for _, p in self._trainable(group) if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, norm_type=norm_type)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        group.last_grad_norm = norm.detach()  # a device tensor: read lazily by the metrics
        for metric in group.train_metrics:
            metric.accumulate(None, None, grad_norm=group.last_grad_norm)
        return group.last_grad_norm

    def _require_optimizer(self, group: OptimizerGroup) -> None:
        if group.optimizer is None:
            raise OptimizerNotSetError(
                f"no optimizer for adapter {group.adapter_name!r}: call model.set_optimizer('AdamW', lr=...) "
                f"before stepping"
            )

    @remote_function(dispatch="all")
    def step(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        """Optimizer step, only when the last backward completed an accumulation window."""
        group = self._group(adapter_name)
        self._require_optimizer(group)
        if not group.claim("step"):
            return
        self._finalize_grads(group)
        lr = group.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(group.optimizer)
            self.scaler.update()
        else:
            group.optimizer.step()
        for metric in group.train_metrics:
            metric.accumulate(None, None, lr=lr)

    @remote_function(dispatch="all")
    def zero_grad(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        group = self._group(adapter_name)
        if group.optimizer is not None and group.claim("zero_grad"):
            group.optimizer.zero_grad(set_to_none=True)

    @remote_function(dispatch="all")
    def lr_step(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        group = self._group(adapter_name)
        if group.lr_scheduler is not None and group.claim("lr_step"):
            group.lr_scheduler.step()

    @remote_function(dispatch="all", collect="first")
    def clip_grad_and_step(
        self, max_grad_norm: float = 1.0, norm_type: float = 2.0, adapter_name: str | None = None, **kwargs: Any
    ) -> None:
        """clip, step, zero_grad and lr_step at the end of an accumulation window; a no-op in between."""
        group = self._group(adapter_name)
        self._require_optimizer(group)
        self._clip(group, max_grad_norm, norm_type)
        self.step(adapter_name=adapter_name)
        self.zero_grad(adapter_name=adapter_name)
        self.lr_step(adapter_name=adapter_name)

    # ------------------------------------------------------------------ metrics

    @remote_function(dispatch="all", collect="first")
    def calculate_metric(self, is_training: bool = True, adapter_name: str | None = None, **kwargs: Any):
        """Every metric of the group as strings: loss, grad_norm, accuracy, lr, iters, speed, ...

        When ``TWINKLE_METRICS_FILE`` is set, rank 0 also appends ``{"step", "ts", "metrics"}`` as one JSON line
        (evaluation metrics are prefixed ``eval/`` there). With ``TWINKLE_STOP_AFTER_STEPS=k`` the process exits
        (status 0) after the first training record at optimizer step k or later (a platform replay).
        """
        group = self._group(adapter_name)
        values: dict[str, str] = {}
        for metric in group.train_metrics if is_training else group.eval_metrics:
            values.update(metric.calculate())
        sink = os.environ.get("TWINKLE_METRICS_FILE")
        if sink and _is_rank0():
            numbers: dict[str, Any] = {}
            for key, value in values.items():
                try:
                    numbers[key if is_training else f"eval/{key}"] = float(value)
                except ValueError:
                    numbers[key if is_training else f"eval/{key}"] = value
            record = {"step": group.optimizer_steps, "ts": time.time(), "metrics": numbers}
            Path(sink).parent.mkdir(parents=True, exist_ok=True)
            with open(sink, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        if is_training:  # a replay stops here after its k-th step's record (TWINKLE_STOP_AFTER_STEPS)
            stop_if_reached(group.optimizer_steps)
        return values

    # ------------------------------------------------------------------ state

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.tokenizer_id is not None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_id)
            except Exception as exc:  # noqa: BLE001 - a model folder without a tokenizer still trains
                logger.warning("no tokenizer in %s (%s); checkpoints will not include one", self.tokenizer_id, exc)
                self._tokenizer = False
        return self._tokenizer or None

    # ------------------------------------------------------------------ weight sync (CheckpointEngineManager)

    @remote_function(dispatch="all", collect="first")
    def get_peft_config_dict(self, adapter_name: str | None = None) -> dict[str, Any] | None:
        """The adapter's ``LoraConfig.to_dict()`` (sets as sorted lists), or None without an adapter."""
        group = self._group(adapter_name)
        if not (group.adapter_name and self._is_peft):
            return None
        config = self.model.peft_config[group.adapter_name].to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}

    def iter_sync_weights(self, adapter_name: str | None, base_sync_done: bool, merge_and_sync: bool, model_keys: Any):
        """What ``send_weights`` streams (gpu.md §2.3): names without ``base_model.model.``.

        First call: the base weights, no LoRA keys (``.base_layer`` kept unless ``merge_and_sync``). Later calls:
        the LoRA weights only (``merge_and_sync=False``), or the adapter merged into every non-LoRA weight and
        unmerged again (``merge_and_sync=True``). Every rank runs it: under FSDP2 the full state dict is a
        collective.
        """
        group = self._group(adapter_name)
        lora = bool(group.adapter_name) and self._is_peft
        if lora and base_sync_done and not merge_and_sync:
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.model, state_dict=self._full_state_dict(),
                                              adapter_name=group.adapter_name)
            for name, tensor in state.items():
                yield strip_peft_prefix(name), tensor
            return
        merge = lora and base_sync_done and merge_and_sync
        if merge and self._is_fsdp():
            raise _parallel.UnsupportedParallelismError(
                "merge_and_sync=True with a LoRA adapter under FSDP2 is not supported; use merge_and_sync=False"
            )
        if merge:
            self.model.merge_adapter([group.adapter_name])
        try:
            state = self._full_state_dict()
            if merge:  # the CPU state dict aliases the parameters: copy before unmerging
                state = {k: v.clone() for k, v in state.items()}
        finally:
            if merge:
                self.model.unmerge_adapter()
        for name, tensor in state.items():
            if is_lora_key(name):
                continue
            name = strip_peft_prefix(name)
            if merge_and_sync or not lora:
                name = strip_base_layer(name)
            yield name, tensor

    def _is_fsdp(self) -> bool:
        return self._wrapped is not None and self._wrapped is self.model and hasattr(self.model, "reshard")

    @remote_function(dispatch="all", execute="first")
    def upload_to_hub(self, checkpoint_dir: str, hub_model_id: str, hub_token: str | None = None,
                      async_upload: bool = True, **kwargs: Any) -> Any:
        """Push a saved checkpoint folder to ModelScope (``ms://`` or bare id) or Hugging Face (``hf://``).

        Needs the network and a token; with ``async_upload`` returns a future (``HubOperation.wait_for``).
        """
        from twinkle.hub.hub import HubOperation

        if async_upload:
            return HubOperation.async_push_to_hub(hub_model_id, checkpoint_dir, token=hub_token)
        return HubOperation.push_to_hub(hub_model_id, checkpoint_dir, token=hub_token)

    def _lazy_wrap_model(self) -> torch.nn.Module:
        """Wrap the model for the mesh now (DDP / FSDP2) instead of at the first forward; returns the wrapper."""
        return self._module()

    @remote_function(dispatch="all", collect="first")
    def get_train_configs(self, adapter_name: str | None = None, **kwargs: Any) -> str:
        """A readable summary of the group's training set-up."""
        group = self._group(adapter_name)
        lines = [
            f"model: {self.model_id} ({type(self.model).__name__}) on {self.device}, autocast={self.autocast_dtype}",
            f"mesh: {self.device_mesh!r}, strategy: {self.strategy}",
            f"adapter: {group.adapter_name or '(full fine-tuning)'}, gas: {group.gradient_accumulation_steps}",
            f"optimizer: {group.optimizer!r}".replace("\n", " "),
            f"lr_scheduler: {type(group.lr_scheduler).__name__ if group.lr_scheduler else None}",
            f"loss: {group.loss!r}",
        ]
        if group.adapter_name:
            lines.append(f"lora: {self.model.peft_config[group.adapter_name]!r}")
        return "\n".join(lines)
