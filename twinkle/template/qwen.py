"""Qwen-family templates."""

from __future__ import annotations

from typing import Any

from twinkle.template.base import Template


class Qwen3_5Template(Template):  # the upstream name
    """The template for Qwen3 / Qwen3.5 chat models.

    Same encoding as ``Template`` (the tokenizer's own chat template); ``<think>...</think>`` in assistant replies
    is moved to ``reasoning_content`` when the chat template renders it, and ``enable_thinking`` is passed through.
    """

    def __init__(self, model_id: str, enable_thinking: bool = True, **kwargs: Any) -> None:
        super().__init__(model_id, enable_thinking=enable_thinking, **kwargs)
