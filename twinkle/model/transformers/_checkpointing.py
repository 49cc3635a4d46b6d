"""Saving and loading ``TransformersModel`` checkpoints: weights as safetensors, training state that loads without
unpickling code (``torch.load(weights_only=True)`` and JSON), folders written atomically by rank 0.

A mixin of ``TransformersModel`` (it uses the model's groups, wrapping and tokenizer), kept apart so the model file
holds the training step and this file holds what a checkpoint is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist

from twinkle.errors import CheckpointError
from twinkle.infra import remote_function
from twinkle.model._checkpoint import (
    TRAINER_STATE,
    atomic_dir,
    default_output_dir,
    get_rng_state,
    load_state_file,
    set_rng_state,
)
from twinkle.model._hub import resolve_model_dir
from twinkle.model.optimizer_group import OptimizerGroup


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class CheckpointingMixin:
    """``save``, ``load``, ``resume_from_checkpoint`` and the state dicts they are made of."""

    model: Any
    scaler: Any

    if TYPE_CHECKING:  # the model class provides these

        def _group(self, adapter_name: str | None = None) -> OptimizerGroup: ...
        def _module(self) -> torch.nn.Module: ...
        def _require_optimizer(self, group: OptimizerGroup) -> None: ...
        def _is_fsdp(self) -> bool: ...
        @property
        def tokenizer(self) -> Any: ...

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's state dict on the CPU (a collective under FSDP2: every rank must call it)."""
        if self._is_fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return cast(dict[str, torch.Tensor], state)  # a model's state dict holds tensors only
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    @remote_function(dispatch="all", collect="first")
    def get_state_dict(self, adapter_name: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The trainable weights: the adapter's (keys without the adapter name) or, without adapters, the model's."""
        group = self._group(adapter_name)
        full = self._full_state_dict()
        if not group.adapter_name:
            return full
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model, state_dict=full, adapter_name=group.adapter_name)

    def _optimizer_state(self, group: OptimizerGroup) -> dict[str, Any]:
        if self._is_fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.model, group.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return group.optimizer.state_dict()

    @remote_function(dispatch="all", collect="first")
    def save(
        self,
        name: str | None = None,
        output_dir: str | None = None,
        interval: int = 1,
        adapter_name: str | None = None,
        save_optimizer: bool = False,
        **kwargs: Any,
    ) -> str | None:
        """Write a checkpoint folder atomically and return its path (rank 0 writes; every rank must call).

        Args:
            name: folder name; default ``checkpoint-step-{cur_step}``.
            output_dir: parent folder; default ``$TWINKLE_OUTPUT_DIR`` when set, else ``output``.
            interval: save only when the optimizer-step count is a multiple of it (else return None).
            save_optimizer: also write ``optimizer.pt``, ``scheduler.pt``, ``trainer_state.json``, ``rng_state.pt``.

        Raises:
            CheckpointError: the folder cannot be written.
        """
        group = self._group(adapter_name)
        if interval > 1 and group.optimizer_steps % interval:
            return None
        target = Path(output_dir or default_output_dir()) / (name or f"checkpoint-step-{group.cur_step}")
        weights = self.get_state_dict(adapter_name=adapter_name)  # collective under FSDP2
        optim_state = self._optimizer_state(group) if save_optimizer and group.optimizer is not None else None
        error = None
        if _is_rank0():
            try:
                with atomic_dir(target) as tmp:
                    self._write(tmp, group, weights, optim_state, save_optimizer)
            except CheckpointError as exc:
                error = str(exc)
            except OSError as exc:
                error = (
                    f"cannot write checkpoint {str(target)!r} ({exc}); pass a writable output_dir= to save(), or "
                    f"set TWINKLE_OUTPUT_DIR"
                )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error:
            raise CheckpointError(error)
        return str(target)

    def _write(self, tmp: Path, group: OptimizerGroup, weights: dict, optim_state: Any, save_optimizer: bool) -> None:
        from safetensors.torch import save_file

        if group.adapter_name:
            config = self.model.peft_config[group.adapter_name]
            config.save_pretrained(str(tmp))
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "adapter_model.safetensors"))
        else:
            self.model.save_pretrained(str(tmp), state_dict=weights)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(tmp))
        if save_optimizer:
            if optim_state is not None:
                torch.save(optim_state, tmp / "optimizer.pt")
            if group.lr_scheduler is not None:
                torch.save(group.lr_scheduler.state_dict(), tmp / "scheduler.pt")
            if self.scaler is not None:
                torch.save(self.scaler.state_dict(), tmp / "scaler.pt")
            state = {
                "cur_step": group.cur_step,
                "gradient_accumulation_steps": group.gradient_accumulation_steps,
                "consumed_train_samples": group.consumed_train_samples,
                "adapter_name": group.adapter_name,
            }
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
            torch.save(get_rng_state(), tmp / "rng_state.pt")  # tensors and plain values: weights_only loads it

    @remote_function(dispatch="all")
    def load(self, name: str, load_optimizer: bool = False, adapter_name: str | None = None, **kwargs: Any) -> None:
        """Load weights saved by ``save`` (a folder, or a hub id) into the group; optionally its optimizer.

        Raises:
            CheckpointError: the folder has no weights of the expected kind.
            OptimizerNotSetError: ``load_optimizer=True`` before ``set_optimizer``.
        """
        group = self._group(adapter_name)
        folder = Path(resolve_model_dir(name) if not Path(name).exists() else name)
        self._module()
        if group.adapter_name:
            state = self._read_adapter(folder)
            suffix = f".{group.adapter_name}"
            mapping = {}
            for key in self.model.state_dict():
                if f"{suffix}." in key:
                    mapping[key.replace(suffix + ".", ".", 1)] = key
            missing = [k for k in state if k not in mapping]
            if missing:
                raise CheckpointError(
                    f"{folder}: adapter weights {missing[:3]} match no parameter of adapter {group.adapter_name!r}; "
                    f"was it saved from a model with the same LoraConfig?"
                )
            self._load_into_model({mapping[k]: v for k, v in state.items()})
        else:
            from transformers import AutoModelForCausalLM

            if not (folder / "config.json").exists():
                raise CheckpointError(f"{folder} holds no full model (no config.json); pass a folder save() wrote")
            source = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
            self._load_into_model(source.state_dict())
        if load_optimizer:
            self._require_optimizer(group)
            path = folder / "optimizer.pt"
            if not path.exists():
                raise CheckpointError(f"{folder} has no optimizer.pt; save it with save(..., save_optimizer=True)")
            optim_state = load_state_file(path)  # never unpickles code
            if self._is_fsdp():
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(
                    self.model, group.optimizer, optim_state, options=StateDictOptions(full_state_dict=True)
                )
            else:
                group.optimizer.load_state_dict(optim_state)
            if group.lr_scheduler is not None and (folder / "scheduler.pt").exists():
                group.lr_scheduler.load_state_dict(load_state_file(folder / "scheduler.pt"))
            if self.scaler is not None and (folder / "scaler.pt").exists():
                self.scaler.load_state_dict(load_state_file(folder / "scaler.pt"))

    @staticmethod
    def _read_adapter(folder: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = folder / "adapter_model.safetensors"
        if path.exists():
            return load_file(str(path))
        legacy = folder / "adapter_model.bin"
        if legacy.exists():
            return load_state_file(legacy)
        raise CheckpointError(f"{folder} has no adapter_model.safetensors; pass a folder save() wrote for an adapter")

    def _load_into_model(self, state: dict[str, torch.Tensor]) -> None:
        if self._is_fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(
                self.model, cast(dict[str, Any], state), options=StateDictOptions(full_state_dict=True, strict=False)
            )
            return
        own = self.model.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                if key in own:
                    own[key].copy_(value.to(own[key].dtype))

    @remote_function(dispatch="all", collect="first")
    def resume_from_checkpoint(
        self, checkpoint_dir: str, adapter_name: str | None = None, *, resume_only_model: bool = False, **kwargs: Any
    ):
        """Restore weights, optimizer, scheduler, RNG and step counters from ``save(..., save_optimizer=True)``.

        With ``resume_only_model`` only the weights are loaded (a fresh optimizer and schedule, this process's RNG
        and step counters); the saved counters are still returned.

        Returns:
            ``{'cur_step', 'consumed_train_samples', 'gradient_accumulation_steps'}`` as saved; pass
            ``consumed_train_samples`` to ``DataLoader.skip_consumed_samples``.
        """
        group = self._group(adapter_name)
        folder = Path(checkpoint_dir)
        if not (folder / TRAINER_STATE).exists():
            raise CheckpointError(
                f"{folder} has no {TRAINER_STATE}; resume needs a checkpoint saved with save(..., save_optimizer=True)"
            )
        state = json.loads((folder / TRAINER_STATE).read_text())
        saved = {
            "cur_step": int(state["cur_step"]),
            "consumed_train_samples": int(state.get("consumed_train_samples", 0)),
            "gradient_accumulation_steps": int(
                state.get("gradient_accumulation_steps", group.gradient_accumulation_steps)
            ),
        }
        if resume_only_model:
            self.load(str(folder), load_optimizer=False, adapter_name=adapter_name)
            return saved
        self.load(str(folder), load_optimizer=True, adapter_name=adapter_name)
        group.cur_step = saved["cur_step"]
        group.gradient_accumulation_steps = saved["gradient_accumulation_steps"]
        group.consumed_train_samples = saved["consumed_train_samples"]
        group.grads_finalized_at = group.cur_step
        group.done = {op: group.cur_step for op in ("clip", "step", "zero_grad", "lr_step")}
        rng_path = folder / "rng_state.pt"
        if rng_path.exists():
            set_rng_state(load_state_file(rng_path), str(rng_path))
        return saved
