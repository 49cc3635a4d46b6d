"""Trainable models: ``TransformersModel`` (Hugging Face causal LMs, LoRA or full fine-tuning),
``MultiLoraTransformersModel`` (many tenants' adapters on one base), and lazily the Megatron backend
(``MegatronModel``, ``MegatronStrategy``, ``MultiLoraMegatronModel``: CUDA only)."""

from typing import Any

from twinkle.model.base import TwinkleModel
from twinkle.model.multi_lora import MultiLoraTransformersModel
from twinkle.model.optimizer_group import OptimizerGroup
from twinkle.model.transformers import TransformersModel

__all__ = ["MultiLoraTransformersModel", "OptimizerGroup", "TransformersModel", "TwinkleModel"]


_MEGATRON = ("MegatronModel", "MegatronStrategy", "MultiLoraMegatronModel")


def __getattr__(name: str) -> Any:
    # lazy: the Megatron backend imports nothing heavy until asked for, and needs CUDA to build
    if name in _MEGATRON:
        from twinkle.model import megatron

        return getattr(megatron, name)
    raise AttributeError(f"module 'twinkle.model' has no attribute {name!r}")
