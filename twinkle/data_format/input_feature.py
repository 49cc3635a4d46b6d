"""``InputFeature`` (an encoded sample) and ``ModelOutput`` (what a model's forward returns)."""

from __future__ import annotations

from typing import Any, TypedDict


class InputFeature(TypedDict, total=False):
    """One encoded sample; every field is a 1-D array of the same length (``length`` is an int).

    ``labels`` are already rolled left by one: ``labels[i]`` is the target for the token at ``i``, and -100
    marks positions that carry no loss (prompt, padding, the last position).
    """

    input_ids: Any
    attention_mask: Any
    position_ids: Any
    labels: Any
    completion_mask: Any
    length: int
    routed_experts: Any


class ModelOutput(TypedDict, total=False):
    """A forward pass's results: ``logits`` [B, T, V], ``loss`` scalar, ``logps`` [B, T], token count, embeddings."""

    logits: Any
    loss: Any
    logps: Any
    num_tokens: int
    embeddings: Any
    routed_experts: Any


class LossOutput(TypedDict, total=False):
    """What a loss returns: ``loss`` and ``num_tokens`` (0: already a mean)."""

    loss: Any
    num_tokens: Any
