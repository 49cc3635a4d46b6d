"""``MultiLoraTransformersModel``: one base model, up to ``max_loras`` tenants' LoRA adapters, one process.

How the slots work (gpu.md §4). At construction the model gets ``max_loras`` PEFT adapters ``lora_0..n-1`` of
rank ``max_r`` on every linear layer. A tenant's ``add_adapter_to_model(name, LoraConfig(r=r, ...))`` takes a free
slot and uses only its leading ``r`` ranks: the slot's ``lora_B`` columns beyond ``r`` stay zero (their gradient is
masked after every backward), so the slot computes exactly ``B[:, :r] @ A[:r] * alpha/r`` - the same function and
the same gradients as a plain rank-``r`` LoRA. Layers outside the tenant's ``target_modules`` get scaling 0 and are
left out of its optimizer. Everything else a training loop touches (optimizer, scheduler, loss, template,
processor, gradient accumulation, metrics) lives in the tenant's own ``OptimizerGroup``, reusing
``TransformersModel``'s code unchanged: the group's PEFT name is the slot, the tenant name maps to it.

Ours: the tenant's ``lora_dropout`` is honoured (the slot's dropout module is swapped per tenant); upstream keeps
the slot's. A slot's initial weights are the ones drawn at construction (``lora_A`` random, ``lora_B`` zero);
``remove_adapter`` restores them, so a freed slot starts the next tenant exactly like a fresh one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from twinkle.errors import AdapterError, CheckpointError, InputTooLongError, SlotsExhaustedError
from twinkle.infra import remote_class, remote_function
from twinkle.model.optimizer_group import OptimizerGroup
from twinkle.model.transformers.transformers_model import TransformersModel

__all__ = ["MultiLoraTransformersModel"]

_PEFT_PREFIX = "base_model.model."


def _targets(module_name: str, target_modules: Any) -> bool:
    """PEFT's rule: 'all-linear' = every slot layer; a string = regex full match; a list = name or dotted suffix."""
    if target_modules in (None, "all-linear"):
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in target_modules)


@remote_class()
class MultiLoraTransformersModel(TransformersModel):
    """A ``TransformersModel`` whose adapters are tenants sharing ``max_loras`` pre-built LoRA slots.

    Args:
        max_loras: slots, i.e. adapters that can live at once.
        max_r: the slots' rank; a tenant's ``r`` must not exceed it.
        max_length: the most tokens (summed ``len(input_ids)``) one ``forward`` may take.
        target_modules: the layers the slots cover (``'all-linear'``, a regex, or a list of names).
        lora_config: a ``LoraConfig`` for the slots instead of ``r=max_r, lora_alpha=32``.
        Other arguments: as ``TransformersModel``.
    """

    def __init__(
        self,
        model_cls: Any = None,
        model_id: str | None = None,
        config: Any = None,
        device_mesh: Any = None,
        mixed_precision: str | None = "bf16",
        strategy: str = "accelerate",
        ddp_config: dict[str, Any] | None = None,
        fsdp_config: dict[str, Any] | None = None,
        lora_config: Any = None,
        grad_scaler_config: dict[str, Any] | None = None,
        memory_efficient_init: bool = False,
        max_loras: int = 5,
        max_r: int = 32,
        max_length: int = 8192,
        target_modules: Any = "all-linear",
        **kw: Any,
    ) -> None:
        from peft import LoraConfig, get_peft_model

        if max_loras < 1 or max_r < 1:
            raise AdapterError(f"max_loras and max_r must be >= 1, got max_loras={max_loras}, max_r={max_r}")
        super().__init__(
            model_cls=model_cls, model_id=model_id, config=config, device_mesh=device_mesh,
            mixed_precision=mixed_precision, strategy=strategy, ddp_config=ddp_config, fsdp_config=fsdp_config,
            grad_scaler_config=grad_scaler_config, memory_efficient_init=memory_efficient_init, **kw,
        )
        self.max_loras, self.max_r, self.max_length = max_loras, max_r, max_length
        slot_config = lora_config or LoraConfig(r=max_r, lora_alpha=32, target_modules=target_modules)
        self.max_r = slot_config.r
        for i in range(max_loras):
            name = f"lora_{i}"
            if i == 0:
                self.model = get_peft_model(self.model, slot_config, adapter_name=name)
            else:
                self.model.add_adapter(name, slot_config)
        self.model.to(self.device)
        self._slots = [f"lora_{i}" for i in range(max_loras)]
        # slot -> {module name: LoRA layer}; the per-tenant knobs (scaling, dropout, B mask) live on these
        self._layers: dict[str, dict[str, Any]] = {s: {} for s in self._slots}
        for name, module in self.model.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "scaling"):
                short = name.removeprefix(_PEFT_PREFIX)
                for slot in self._slots:
                    if slot in module.lora_A:
                        self._layers[slot][short] = module
        self._initial_A = {
            slot: {n: layer.lora_A[slot].weight.detach().to("cpu", copy=True) for n, layer in layers.items()}
            for slot, layers in self._layers.items()
        }
        self._initial_scaling = {
            s: {n: layer.scaling[s] for n, layer in ls.items()} for s, ls in self._layers.items()
        }
        self._initial_dropout = {
            s: {n: layer.lora_dropout[s] for n, layer in ls.items()} for s, ls in self._layers.items()
        }
        for name, param in self.model.named_parameters():
            if ".lora_" in name:
                param.requires_grad_(True)
        self.model.set_adapter(self._slots[0])
        self.tenants: dict[str, str] = {}  # tenant name -> slot
        self.tenant_configs: dict[str, Any] = {}
        self.optimizer_groups = {}
        self.active_group = ""
        self._param_cache.clear()

    # ------------------------------------------------------------------ tenant <-> slot

    def _group(self, adapter_name: str | None = None) -> OptimizerGroup:
        if not adapter_name:
            if len(self.tenants) == 1:
                return self.optimizer_groups[next(iter(self.tenants.values()))]
            raise AdapterError(
                "MultiLoraTransformersModel needs adapter_name=<tenant> on every call; "
                f"adapters: {', '.join(repr(n) for n in self.tenants) or '(none)'}"
            )
        slot = self.tenants.get(adapter_name)
        if slot is None and adapter_name in self.optimizer_groups:
            slot = adapter_name  # TransformersModel's own code names the group by its PEFT (slot) name
        if slot is None:
            raise AdapterError(f"Adapter {adapter_name} not found; add it with add_adapter_to_model first")
        return self.optimizer_groups[slot]

    def _collect_trainable(self, group: OptimizerGroup) -> list[tuple[str, torch.nn.Parameter]]:
        # only the layers the tenant targets: the others have scaling 0 and must not be decayed by its optimizer
        params = super()._collect_trainable(group)
        tenant = self._tenant_of(group.adapter_name)
        config = self.tenant_configs.get(tenant) if tenant is not None else None
        if config is None:
            return params
        return [(n, p) for n, p in params if _targets(self._layer_name(n), config.target_modules)]

    @staticmethod
    def _layer_name(param_name: str) -> str:
        short = param_name.removeprefix(_PEFT_PREFIX)
        return short.split(".lora_", 1)[0]

    def _tenant_of(self, slot: str) -> str | None:
        for tenant, s in self.tenants.items():
            if s == slot:
                return tenant
        return None

    def _config_of(self, slot: str) -> Any:
        tenant = self._tenant_of(slot)
        if tenant is None:
            raise AdapterError(f"slot {slot!r} holds no adapter; add one with add_adapter_to_model")
        return self.tenant_configs[tenant]

    @property
    def free_slots(self) -> int:
        return self.max_loras - len(self.tenants)

    # ------------------------------------------------------------------ adapters

    @remote_function(dispatch="all")
    def add_adapter_to_model(
        self,
        adapter_name: str,
        config_or_dir: Any,
        gradient_accumulation_steps: int = 1,
        init_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Give tenant ``adapter_name`` a free slot, configured by its ``LoraConfig`` (rank <= ``max_r``).

        ``init_seed`` (ours): draw the tenant's initial weights as PEFT would for a plain model right after
        ``torch.manual_seed(init_seed)``, so a tenant starts exactly like ``TransformersModel`` run locally with
        that seed (the global RNG is left untouched). Without it the tenant starts from the slot's initial weights.

        Raises:
            AdapterError: a duplicate name, a config that is not a ``LoraConfig``, or ``r > max_r``.
            SlotsExhaustedError: every slot is taken (``RuntimeError``).
        """
        from peft import LoraConfig

        if isinstance(config_or_dir, Mapping):
            config_or_dir = LoraConfig(**config_or_dir)
        if not isinstance(config_or_dir, LoraConfig):
            raise AdapterError(f"add_adapter_to_model takes a peft.LoraConfig, got {type(config_or_dir).__name__}")
        if not adapter_name:
            raise AdapterError("adapter_name must be a non-empty string, e.g. 'default'")
        if adapter_name in self.tenants:
            raise AdapterError(f"an adapter named {adapter_name!r} exists already; pick another name")
        config = config_or_dir
        if config.r > self.max_r:
            raise AdapterError(f"Too big rank for lora: {config.r} (max_r={self.max_r}); use r <= {self.max_r}")
        free = [s for s in self._slots if s not in self.tenants.values()]
        if not free:
            raise SlotsExhaustedError(
                f"No lora available for tenant {adapter_name!r}. Max loras: {self.max_loras}; "
                f"remove an adapter or retry later"
            )
        slot = free[0]
        config.bias, config.init_lora_weights = "none", False
        config.modules_to_save, config.trainable_token_indices = None, None
        self._configure_slot(slot, config)
        if init_seed is not None:
            self._seeded_init(slot, config, int(init_seed))
        group = self._new_group(slot, gradient_accumulation_steps)
        self.tenants[adapter_name] = slot
        self.tenant_configs[adapter_name] = config
        self.optimizer_groups[slot] = group
        self._param_cache.clear()
        self._activate(group)

    def _configure_slot(self, slot: str, config: Any) -> None:
        r = config.r
        scale = config.lora_alpha / (r ** 0.5 if config.use_rslora else r)
        dropout = torch.nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else torch.nn.Identity()
        with torch.no_grad():
            for name, layer in self._layers[slot].items():
                layer.lora_B[slot].weight[:, r:].zero_()
                layer.scaling[slot] = scale if _targets(name, config.target_modules) else 0.0
                layer.lora_dropout[slot] = dropout
                layer.lora_B[slot].weight._twinkle_rank = r  # read by _mask_grads

    def _seeded_init(self, slot: str, config: Any, seed: int) -> None:
        # PEFT's own update_layer on a scratch adapter name, layer by layer in the order get_peft_model visits
        # them, makes exactly the draws a plain get_peft_model(model, config) would make after manual_seed(seed)
        import copy

        scratch_config = copy.deepcopy(config)
        scratch_config.init_lora_weights = True
        scratch = "_twinkle_init"
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for name, layer in self._layers[slot].items():
                if not _targets(name, config.target_modules):
                    continue
                layer.update_layer(scratch, config.r, config.lora_alpha, scratch_config)
                layer.lora_A[slot].weight[: config.r].copy_(layer.lora_A[scratch].weight)
                layer.lora_B[slot].weight[:, : config.r].copy_(layer.lora_B[scratch].weight)
                layer.delete_adapter(scratch)
        if self.model.active_adapter in self.tenants.values() or self.model.active_adapter == slot:
            self.model.set_adapter(self.model.active_adapter)  # update_layer re-froze the inactive adapters

    @remote_function(dispatch="all")
    def remove_adapter(self, adapter_name: str, **kwargs: Any) -> None:
        """Drop the tenant's group and free its slot with the slot's initial weights; unknown names are ignored."""
        slot = self.tenants.pop(adapter_name, None)
        if slot is None:
            return
        self.tenant_configs.pop(adapter_name, None)
        self.optimizer_groups.pop(slot, None)
        with torch.no_grad():
            for name, layer in self._layers[slot].items():
                layer.lora_A[slot].weight.copy_(self._initial_A[slot][name])
                layer.lora_A[slot].weight.grad = None
                layer.lora_B[slot].weight.zero_()
                layer.lora_B[slot].weight.grad = None
                layer.scaling[slot] = self._initial_scaling[slot][name]
                layer.lora_dropout[slot] = self._initial_dropout[slot][name]
        self._param_cache.clear()
        if self.active_group == slot:
            self.active_group = ""

    @remote_function(dispatch="all", collect="first")
    def list_adapters(self) -> dict[str, int]:
        """Tenant name -> its LoRA rank."""
        return {name: self.tenant_configs[name].r for name in self.tenants}

    # ------------------------------------------------------------------ rank mask, length guard

    def backward(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        super().backward(adapter_name=adapter_name, **kwargs)
        self._mask_grads(self._group(adapter_name))

    def _mask_grads(self, group: OptimizerGroup) -> None:
        # ranks beyond the tenant's r: B's columns get a gradient from A's random rows; zero it so B[:, r:]
        # stays 0 and neither the update nor the gradient norm sees ranks the tenant does not have
        for _, param in self._trainable(group):
            r = getattr(param, "_twinkle_rank", None)
            if r is not None and param.grad is not None and r < param.shape[1]:
                param.grad[:, r:] = 0

    def _collate(self, inputs: Any, group: OptimizerGroup) -> dict[str, Any]:
        tokens = _count_tokens(inputs)
        if tokens is not None and tokens > self.max_length:
            raise InputTooLongError(
                f"Max length exceeds {self.max_length}: the batch has {tokens} tokens; send fewer or shorter rows"
            )
        batch = super()._collate(inputs, group)
        ids = batch.get("input_ids")
        if tokens is None and isinstance(ids, torch.Tensor) and ids.numel() > self.max_length:
            raise InputTooLongError(
                f"Max length exceeds {self.max_length}: the batch has {ids.numel()} tokens; send fewer or shorter rows"
            )
        return batch

    # ------------------------------------------------------------------ checkpoints: sliced to the tenant's rank

    @remote_function(dispatch="all", collect="first")
    def get_state_dict(self, adapter_name: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The tenant's adapter weights as a plain rank-``r`` PEFT state dict (keys without the slot name)."""
        group = self._group(adapter_name)
        config = self._config_of(group.adapter_name)
        state = super().get_state_dict(adapter_name=adapter_name, **kwargs)
        out = {}
        for key, value in state.items():
            if not _targets(self._layer_name(key), config.target_modules):
                continue
            if ".lora_A." in key:
                value = value[: config.r].clone()
            elif ".lora_B." in key:
                value = value[:, : config.r].clone()
            out[key] = value
        return out

    def _write(self, tmp: Path, group: OptimizerGroup, weights: dict, optim_state: Any, save_optimizer: bool) -> None:
        slot_config = self.model.peft_config[group.adapter_name]
        tenant_config = self._config_of(group.adapter_name)
        # the standard PEFT folder of the tenant's own config, loadable by any PEFT model
        self.model.peft_config[group.adapter_name] = tenant_config
        try:
            super()._write(tmp, group, weights, optim_state, save_optimizer)
        finally:
            self.model.peft_config[group.adapter_name] = slot_config

    def _load_into_model(self, state: dict[str, torch.Tensor]) -> None:
        own = self.model.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                if key not in own:
                    continue
                target = own[key]
                if value.shape != target.shape:
                    fits = value.dim() == target.dim() and all(
                        v <= t for v, t in zip(value.shape, target.shape, strict=True)
                    )
                    if not fits:
                        raise CheckpointError(
                            f"checkpoint tensor {key} has shape {tuple(value.shape)}, which does not fit the slot "
                            f"{tuple(target.shape)}; was it saved with r <= max_r={self.max_r}?"
                        )
                    target = target[tuple(slice(0, s) for s in value.shape)]
                target.copy_(value.to(target.dtype))


def _count_tokens(inputs: Any) -> int | None:
    """Summed ``len(input_ids)`` of encoded rows; None when the rows are not encoded yet (or a collated dict)."""
    if isinstance(inputs, Mapping):
        ids = inputs.get("input_ids")
        if isinstance(ids, torch.Tensor):
            return int(ids.numel())
        if isinstance(ids, list) and ids and isinstance(ids[0], list):
            return sum(len(r) for r in ids)
        if isinstance(ids, list):
            return len(ids)
        return None
    if isinstance(inputs, (list, tuple)) and inputs and all(
        isinstance(r, Mapping) and "input_ids" in r for r in inputs
    ):
        return sum(len(r["input_ids"]) for r in inputs)
    return None
