"""Trainable models: ``TransformersModel`` (Hugging Face causal LMs, LoRA or full fine-tuning)."""

from twinkle.model.base import TwinkleModel
from twinkle.model.optimizer_group import OptimizerGroup
from twinkle.model.transformers import TransformersModel

__all__ = ["OptimizerGroup", "TransformersModel", "TwinkleModel"]
