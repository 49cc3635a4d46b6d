"""``TwinkleModel``: the interface every trainable model (Transformers, Megatron, multi-LoRA) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = ["TwinkleModel"]


class TwinkleModel(ABC):
    """The training-loop surface a script drives; every method takes ``adapter_name=`` to pick an optimizer group.

    A training step is ``forward_backward(inputs=batch)`` then ``clip_grad_and_step()``; with
    ``gradient_accumulation_steps=gas`` the optimizer steps once after every ``gas`` micro-batches.
    """

    @abstractmethod
    def forward(self, inputs: Any, **kwargs: Any) -> dict[str, Any]: ...

    @abstractmethod
    def forward_only(self, inputs: Any, **kwargs: Any) -> dict[str, Any]: ...

    @abstractmethod
    def calculate_loss(self, **kwargs: Any) -> float: ...

    @abstractmethod
    def backward(self, **kwargs: Any) -> None: ...

    @abstractmethod
    def forward_backward(self, inputs: Any, **kwargs: Any) -> dict[str, Any]: ...

    @abstractmethod
    def clip_grad_norm(self, max_grad_norm: float = 1.0, norm_type: float = 2.0, **kwargs: Any) -> float | None: ...

    @abstractmethod
    def step(self, **kwargs: Any) -> None: ...

    @abstractmethod
    def zero_grad(self, **kwargs: Any) -> None: ...

    @abstractmethod
    def lr_step(self, **kwargs: Any) -> None: ...

    @abstractmethod
    def clip_grad_and_step(self, max_grad_norm: float = 1.0, norm_type: float = 2.0, **kwargs: Any) -> None: ...

    @abstractmethod
    def set_loss(self, loss_cls: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def set_optimizer(self, optimizer_cls: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def set_lr_scheduler(self, scheduler_cls: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def set_template(self, template_cls: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def set_processor(self, processor_cls: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def add_metric(self, metric_cls: Any, is_training: bool | None = None, **kwargs: Any) -> None: ...

    @abstractmethod
    def calculate_metric(self, is_training: bool = True, **kwargs: Any) -> dict[str, str]: ...

    @abstractmethod
    def add_adapter_to_model(self, adapter_name: str, config_or_dir: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def apply_patch(self, patch_cls: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def save(self, name: str | None = None, output_dir: str | None = None, **kwargs: Any) -> str | None: ...

    @abstractmethod
    def load(self, name: str, load_optimizer: bool = False, **kwargs: Any) -> None: ...

    @abstractmethod
    def get_state_dict(self, **kwargs: Any) -> dict[str, Any]: ...

    @abstractmethod
    def resume_from_checkpoint(self, checkpoint_dir: str, **kwargs: Any) -> dict[str, int]: ...

    @abstractmethod
    def get_train_configs(self, **kwargs: Any) -> str: ...

    def upload_to_hub(self, checkpoint_dir: str, hub_model_id: str, **kwargs: Any) -> None:
        raise NotImplementedError(
            "upload_to_hub is not implemented in Twinkle Commons: on the platform, checkpoints written under "
            "TWINKLE_OUTPUT_DIR are uploaded for you; elsewhere push the folder save() returned with the hub's CLI"
        )
