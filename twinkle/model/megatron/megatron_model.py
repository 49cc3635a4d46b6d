"""``MegatronModel``: the Megatron-Core training backend with the ``TransformersModel`` API. [never run]

**Status: written against gpu.md §3.1-3.3 and never executed** — this project has had no GPU machine. Building it
without CUDA, megatron-core, TransformerEngine or mcore_bridge raises ``MissingDependencyError`` naming
``pip install 'twinkle-commons[megatron]'``. The CPU-testable parts (mesh -> parallel sizes, loss-argument slicing
per micro-batch, LoRA target expansion, accepted optimizer names) live in ``_layout.py`` and are tested.
"""

from __future__ import annotations

import os
from typing import Any

from twinkle.checkpoint_engine import CheckpointEngineMixin
from twinkle.checkpoint_engine._names import is_lora_key, strip_base_layer
from twinkle.errors import AdapterError, ConfigError
from twinkle.infra import remote_class, remote_function
from twinkle.model.base import TwinkleModel
from twinkle.model.megatron._layout import (
    check_optimizer_name,
    check_scheduler_name,
    expand_target_modules,
    slice_loss_kwargs,
)
from twinkle.model.megatron.strategy import MegatronStrategy, require_megatron
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.model")

__all__ = ["MegatronModel"]


@remote_class(execute="all")
class MegatronModel(TwinkleModel, CheckpointEngineMixin):
    """A Hugging Face model trained by Megatron-Core with tp/pp/cp/ep from the ``DeviceMesh``.

    Args:
        model_id: a hub id or a local folder (Hugging Face format; mcore_bridge converts it).
        config: extra mcore config keywords. ddp_config: Megatron DDP keywords.
        device_mesh: dp/tp/pp/cp dimensions (``from_sizes(dp_size=, tp_size=, pp_size=, cp_size=)``).
        mixed_precision: ``'bf16'`` (default) or ``'fp16'``.
        load_weights: load the checkpoint's weights (else random init).
        recompute_granularity, recompute_method, recompute_num_layers, recompute_modules: activation recompute.
        **kwargs: ``tokenizer_id``, ``use_distributed_optimizer`` (True), ``variable_seq_lengths`` (True), ``seed``.

    Raises:
        MissingDependencyError: no CUDA, megatron-core, TransformerEngine or mcore_bridge.
    """

    def __init__(self, model_id: str, config: dict | None = None, ddp_config: dict | None = None,
                 device_mesh: DeviceMesh | None = None, mixed_precision: str = "bf16", load_weights: bool = True,
                 recompute_granularity: str | None = "full", recompute_method: str | None = "uniform",
                 recompute_num_layers: int | None = 1, recompute_modules: list[str] | None = None,
                 **kwargs: Any) -> None:
        require_megatron("MegatronModel")
        from twinkle.loss import CrossEntropyLoss
        from twinkle.model._hub import resolve_model_dir
        from twinkle.model.optimizer_group import OptimizerGroup

        self.model_id = model_id
        self.model_dir = resolve_model_dir(model_id)
        self.tokenizer_id = kwargs.pop("tokenizer_id", self.model_dir)
        self.device_mesh = device_mesh or DeviceMesh.from_sizes(dp_size=1)
        self.variable_seq_lengths = kwargs.pop("variable_seq_lengths", True)
        seed = kwargs.pop("seed", int(os.environ.get("TWINKLE_SEED", "42")))
        self.strategy = MegatronStrategy(
            self.model_dir, self.device_mesh, use_distributed_optimizer=kwargs.pop("use_distributed_optimizer", True),
            mixed_precision=mixed_precision, seed=seed, variable_seq_lengths=self.variable_seq_lengths,
            config={**(config or {}), "recompute_granularity": recompute_granularity,
                    "recompute_method": recompute_method, "recompute_num_layers": recompute_num_layers,
                    "recompute_modules": recompute_modules, **kwargs},
            ddp_config=ddp_config)
        self.model = self.strategy.build(load_weights=load_weights)
        group = OptimizerGroup(adapter_name="", gradient_accumulation_steps=1)
        group.loss = CrossEntropyLoss(reduction="sum")
        self.optimizer_groups = {"": group}
        self.adapter_name = ""
        self.peft_configs: dict[str, Any] = {}
        self.cur_step = 0

    # ---------------------------------------------------------------- setters

    def _group(self, adapter_name: str | None = None) -> Any:
        return self.optimizer_groups.get(adapter_name or self.adapter_name) or self.optimizer_groups[""]

    @remote_function(dispatch="all")
    def add_adapter_to_model(self, adapter_name: str, config_or_dir: Any, gradient_accumulation_steps: int = 1,
                             **kwargs: Any) -> None:
        """LoRA on every chunk (mcore_bridge's TP-aware layers); ``target_modules`` 'all-linear', 'all-embedding',
        'all-router' expand over the Megatron modules."""
        from peft import LoraConfig, PeftConfig, get_peft_model

        from twinkle.model.optimizer_group import OptimizerGroup

        if adapter_name in self.peft_configs:
            raise AdapterError(f"an adapter named {adapter_name!r} exists already")
        if isinstance(config_or_dir, str):
            config = PeftConfig.from_pretrained(config_or_dir)
        elif isinstance(config_or_dir, dict):
            config = LoraConfig(**config_or_dir)
        else:
            config = config_or_dir
        modules = [(n, m) for chunk in self.model for n, m in chunk.named_modules()]
        config.target_modules = expand_target_modules(config.target_modules, modules)
        self.model = [get_peft_model(chunk, config, adapter_name=adapter_name) for chunk in self.model]
        self.peft_configs[adapter_name] = config
        group = OptimizerGroup(adapter_name=adapter_name, gradient_accumulation_steps=gradient_accumulation_steps)
        group.loss = self.optimizer_groups[""].loss
        self.optimizer_groups[adapter_name] = group
        self.adapter_name = adapter_name

    @remote_function(dispatch="all")
    def apply_patch(self, patch_cls: Any, **kwargs: Any) -> None:
        raise NotImplementedError("MegatronModel takes no twinkle patches; configure Megatron through config=")

    @remote_function(dispatch="all")
    def set_loss(self, loss_cls: Any, adapter_name: str | None = None, **kwargs: Any) -> None:
        import twinkle.loss as losses
        from twinkle.loss import Loss
        from twinkle.utils.construct import construct_class

        self._group(adapter_name).loss = construct_class(loss_cls, Loss, losses, kind="loss", **kwargs)

    @remote_function(dispatch="all")
    def set_optimizer(self, optimizer_cls: Any = "default", adapter_name: str | None = None, lr: float = 1e-4,
                      **kwargs: Any) -> None:
        """Megatron's (distributed) Adam: weight decay 0.01, betas (0.9, 0.999), eps 1e-8, clip_grad 1.0."""
        check_optimizer_name(optimizer_cls)
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        options = {"optimizer": "adam", "lr": lr, "min_lr": 0.0, "weight_decay": 0.01, "adam_beta1": 0.9,
                   "adam_beta2": 0.999,
                       "adam_eps": 1e-8, "clip_grad": 1.0, "bf16": self.strategy.mixed_precision == "bf16",
                       "use_distributed_optimizer": self.strategy.use_distributed_optimizer}
        options.update(kwargs)
        self._group(adapter_name).optimizer = get_megatron_optimizer(OptimizerConfig(**options), self.model)

    @remote_function(dispatch="all")
    def set_lr_scheduler(self, scheduler_cls: Any = "default", adapter_name: str | None = None,
                         lr_decay_steps: int = 1, max_lr: float = 1e-4, **kwargs: Any) -> None:
        check_scheduler_name(scheduler_cls)
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        group = self._group(adapter_name)
        group.lr_scheduler = OptimizerParamScheduler(
            group.optimizer, init_lr=0.0, max_lr=max_lr, min_lr=0.0, lr_warmup_steps=0, lr_decay_steps=lr_decay_steps,
            lr_decay_style="cosine", start_wd=0.01, end_wd=0.01, wd_incr_steps=lr_decay_steps,
            wd_incr_style="constant", **kwargs)

    @remote_function(dispatch="all")
    def set_template(self, template_cls: Any = "Template", adapter_name: str | None = None, **kwargs: Any) -> None:
        import twinkle.template as templates
        from twinkle.template import Template
        from twinkle.utils.construct import construct_class

        kwargs.setdefault("model_id", self.tokenizer_id)
        self._group(adapter_name).template = construct_class(template_cls, Template, templates, kind="template",
                                                             **kwargs)

    @remote_function(dispatch="all")
    def set_processor(self, processor_cls: Any = "InputProcessor", adapter_name: str | None = None, **kwargs: Any):
        import twinkle.processor as processors
        from twinkle.processor import InputProcessor
        from twinkle.utils.construct import construct_class

        self._group(adapter_name).processor = construct_class(processor_cls, InputProcessor, processors,
                                                              kind="processor", **kwargs)

    @remote_function(dispatch="all")
    def add_metric(self, metric_cls: Any, is_training: bool | None = None, adapter_name: str | None = None, **kw):
        import twinkle.metric as metrics
        from twinkle.metric import Metric
        from twinkle.utils.construct import construct_class

        metric = construct_class(metric_cls, Metric, metrics, kind="metric", device_mesh=self.device_mesh, **kw)
        group = self._group(adapter_name)
        if is_training in (None, True):
            group.train_metrics.append(metric)
        if is_training in (None, False):
            group.eval_metrics.append(metric)

    # ---------------------------------------------------------------- the step

    def _micro_batches(self, inputs: Any, group: Any, micro_batch_size: int | None) -> list[dict]:
        rows = list(inputs)
        if rows and all("input_ids" not in r and "messages" in r for r in rows):
            rows = group.template.batch_encode(rows)
        size = micro_batch_size or min(2, len(rows))
        return group.processor.collate_fn(rows, micro_batch_size=size)

    def _run(self, inputs: Any, micro_batch_size: int | None, forward_only: bool, **kwargs: Any) -> dict[str, Any]:
        import torch
        from megatron.core import mpu
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from twinkle.loss import selective_log_softmax

        adapter = kwargs.pop("adapter_name", None)
        kwargs.pop("disable_lora", None)
        kwargs.pop("task", None)
        temperature = kwargs.pop("temperature", 1.0)
        return_logits = kwargs.pop("return_logits", False)
        group = self._group(adapter)
        batches = self._micro_batches(inputs, group, micro_batch_size)
        total = sum(int(b["input_ids"].shape[0]) for b in batches)
        starts = [sum(int(b["input_ids"].shape[0]) for b in batches[:i]) for i in range(len(batches))]
        results: list[dict] = []

        def forward_step(data_iterator: Any, model: Any):
            index, batch = next(data_iterator)
            batch = {k: v.cuda(non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), attention_mask=None)

            def loss_func(output: Any):
                logps = selective_log_softmax(output / temperature, batch["labels"])
                outputs = {"logps": logps, **({"logits": output} if return_logits else {})}
                loss_kw = slice_loss_kwargs(kwargs, starts[index], int(batch["input_ids"].shape[0]), total)
                result = group.loss(batch, outputs, **loss_kw)
                tokens = result.get("num_tokens") or 1  # a token count of 0 counts as 1
                results.append({"loss": result["loss"].detach(), "logps": logps.detach()})
                return result["loss"], torch.as_tensor(tokens, device=output.device), {}

            return logits, loss_func

        forward_backward = get_forward_backward_func()
        seq_len = max(int(b["input_ids"].shape[-1]) for b in batches)
        forward_backward(forward_step_func=forward_step, data_iterator=iter(enumerate(batches)), model=self.model,
                         num_microbatches=len(batches), seq_length=seq_len, micro_batch_size=batches[0]["input_ids"]
                         .shape[0], forward_only=forward_only)
        loss = torch.stack([r["loss"] for r in results]).sum() if results else torch.zeros((), device="cuda")
        if mpu.get_pipeline_model_parallel_world_size() > 1:  # only the last stage has the loss
            torch.distributed.broadcast(loss, mpu.get_pipeline_model_parallel_last_rank(),
                                        group=mpu.get_pipeline_model_parallel_group())
        torch.distributed.all_reduce(loss, group=mpu.get_data_parallel_group(with_context_parallel=True))
        loss = loss / mpu.get_data_parallel_world_size(with_context_parallel=True)
        if not forward_only:
            group.cur_step += 1
        return {"loss": loss, "logps": [r["logps"] for r in results]}

    @remote_function(dispatch="slice_dp", collect="mean", sync=True)
    def forward_backward(self, inputs: Any, micro_batch_size: int | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._run(inputs, micro_batch_size, forward_only=False, **kwargs)

    @remote_function(dispatch="slice_dp", collect="flatten")
    def forward_only(self, inputs: Any, micro_batch_size: int | None = None, **kwargs: Any) -> dict[str, Any]:
        import torch

        with torch.no_grad():
            return self._run(inputs, micro_batch_size, forward_only=True, **kwargs)

    def forward(self, inputs: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError("MegatronModel runs forward and backward together: use forward_backward")

    def calculate_loss(self, **kwargs: Any) -> float:
        raise NotImplementedError("MegatronModel computes the loss inside forward_backward")

    def backward(self, **kwargs: Any) -> None:
        raise NotImplementedError("MegatronModel runs forward and backward together: use forward_backward")

    @remote_function(dispatch="all", collect="first")
    def clip_grad_norm(self, max_grad_norm: float = 1.0, norm_type: float = 2.0, **kwargs: Any) -> float:
        return 0.0  # Megatron's optimizer clips (clip_grad=1.0) inside step()

    @remote_function(dispatch="all")
    def step(self, adapter_name: str | None = None, optim_params: dict | None = None, **kwargs: Any) -> None:
        group = self._group(adapter_name)
        if group.cur_step % group.gradient_accumulation_steps:
            return  # not a sync step
        if optim_params:
            for param_group in group.optimizer.param_groups:
                allowed = ("lr", "weight_decay", "eps", "betas")
                param_group.update({k: v for k, v in optim_params.items() if k in allowed})
        _, group.grad_norm, _ = group.optimizer.step()

    @remote_function(dispatch="all")
    def zero_grad(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        for chunk in self.model:
            if hasattr(chunk, "zero_grad_buffer"):
                chunk.zero_grad_buffer()
        group = self._group(adapter_name)
        if group.optimizer is not None:
            group.optimizer.zero_grad()

    @remote_function(dispatch="all")
    def lr_step(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        group = self._group(adapter_name)
        if group.lr_scheduler is not None:
            group.lr_scheduler.step(increment=1)

    @remote_function(dispatch="all", collect="first")
    def clip_grad_and_step(self, max_grad_norm: float = 1.0, norm_type: float = 2.0, **kwargs: Any) -> None:
        self.step(**kwargs)
        self.zero_grad(**kwargs)
        self.lr_step(**kwargs)

    @remote_function(dispatch="all", collect="first")
    def calculate_metric(self, is_training: bool = True, adapter_name: str | None = None, **kwargs: Any) -> dict:
        group = self._group(adapter_name)
        out: dict[str, str] = {}
        for metric in group.train_metrics if is_training else group.eval_metrics:
            out.update(metric.calculate())
        return out

    # ---------------------------------------------------------------- weights

    def _bridge(self) -> Any:
        return self.strategy.model_config.bridge

    @remote_function(dispatch="all", collect="first")
    def get_hf_state_dict(self, adapter_name: str = "") -> dict[str, Any]:
        """The weights under Hugging Face names (LoRA only with ``adapter_name``), gathered on every rank."""
        weights = self._bridge().export_weights(self.model, only_master_rank=False, peft_format=bool(adapter_name))
        return {name: tensor.cpu() for name, tensor in weights}

    @remote_function(dispatch="all", collect="first")
    def get_state_dict(self, adapter_name: str = "", **kwargs: Any) -> dict[str, Any]:
        return self.get_hf_state_dict(adapter_name)

    def iter_sync_weights(self, adapter_name: str | None, base_sync_done: bool, merge_and_sync: bool, model_keys: Any):
        lora = bool(self.peft_configs) and base_sync_done and not merge_and_sync
        for name, tensor in self._bridge().export_weights(self.model, only_master_rank=False, peft_format=lora):
            if lora:
                if "lora" in name:
                    yield name, tensor
                continue
            if is_lora_key(name):
                continue
            if self.peft_configs and not merge_and_sync and model_keys is not None:
                head, _, leaf = name.rpartition(".")
                wrapped = f"{head}.base_layer.{leaf}"
                if wrapped in model_keys or ".experts." in name:
                    name = wrapped
            yield (strip_base_layer(name) if merge_and_sync else name), tensor

    @remote_function(dispatch="all", collect="first")
    def get_peft_config_dict(self, adapter_name: str | None = None) -> dict[str, Any] | None:
        config = self.peft_configs.get(adapter_name or self.adapter_name)
        if config is None:
            return None
        out = config.to_dict()
        out["target_modules"] = "all-linear"  # upstream's quirk: the stored targets are Megatron names
        return {k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}

    @remote_function(dispatch="all", collect="first")
    def save(self, name: str | None = None, output_dir: str | None = "output", interval: int = 1,
             save_optimizer: bool = False, merge_lora: bool = False, **kwargs: Any) -> str | None:
        """Hugging Face format through the bridge (a PEFT folder for an adapter), config and tokenizer included."""
        folder = os.path.join(output_dir or "output", name or f"checkpoint-{self._group().cur_step}")
        self._bridge().save_weights(self.model, folder, peft_format=bool(self.peft_configs) and not merge_lora)
        if save_optimizer:
            raise NotImplementedError("save_optimizer (Megatron distributed checkpoints) is not ported yet")
        return folder

    @remote_function(dispatch="all")
    def load(self, name: str, load_optimizer: bool = False, output_dir: str | None = None, **kwargs: Any) -> None:
        folder = name if output_dir is None else os.path.join(output_dir, name)
        if load_optimizer:
            raise NotImplementedError("load_optimizer (Megatron distributed checkpoints) is not ported yet")
        self._bridge().load_weights(self.model, folder, peft_format=bool(self.peft_configs))

    def resume_from_checkpoint(self, checkpoint_dir: str, **kwargs: Any) -> dict[str, int]:
        raise NotImplementedError("resume_from_checkpoint is not ported to MegatronModel yet")

    @remote_function(dispatch="all", collect="first")
    def get_train_configs(self, **kwargs: Any) -> str:
        return repr({"model_id": self.model_id, "parallel": self.strategy.sizes, "adapters": sorted(self.peft_configs)})

    def upload_to_hub(self, checkpoint_dir: str, hub_model_id: str, **kwargs: Any) -> None:
        raise ConfigError("upload a MegatronModel checkpoint with twinkle.hub after save()")
