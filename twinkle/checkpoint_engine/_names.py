"""Weight-name rules of the sync: PEFT prefixes, LoRA keys, ``base_layer`` renames, and fused vLLM names.

Pure string functions, shared by the senders (``TransformersModel``, ``MegatronModel``), the receivers
(``TorchSampler``, ``vLLMSampler``) and ``CheckpointEngineManager``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "PEFT_PREFIX",
    "expand_model_keys",
    "is_lora_key",
    "match_target_key",
    "strip_base_layer",
    "strip_peft_prefix",
]

PEFT_PREFIX = "base_model.model."
_LORA_MARKERS = ("lora_A", "lora_B", "lora_embedding")

# fused vLLM parameter names -> the Hugging Face names they stand for (gpu.md §2.3 step 5)
_FUSED = (
    ("qkv_proj", ("q_proj", "k_proj", "v_proj", "q", "k", "v")),
    ("gate_up_proj", ("gate_proj", "up_proj")),
    ("in_proj_ba", ("in_proj_b", "in_proj_a")),
)
_RENAMES = (
    (re.compile(r"language_model\.model"), "model.language_model"),
    (re.compile(r"^visual\."), "model.visual."),
)


def strip_peft_prefix(name: str) -> str:
    return name.removeprefix(PEFT_PREFIX)


def is_lora_key(name: str) -> bool:
    return any(marker in name for marker in _LORA_MARKERS)


def strip_base_layer(name: str) -> str:
    """``x.q_proj.base_layer.weight`` -> ``x.q_proj.weight`` (PEFT's wrapped linear layers)."""
    return name.replace(".base_layer.", ".")


def _with_base_layer(name: str) -> str:
    head, _, leaf = name.rpartition(".")
    return f"{head}.base_layer.{leaf}" if head else name


def match_target_key(name: str, target_keys: set[str] | frozenset[str]) -> str | None:
    """The key of ``target_keys`` that ``name`` stands for: itself, without ``.base_layer``, or with it added
    before the last segment; ``None`` when none fits."""
    name = strip_peft_prefix(name)
    for candidate in (name, strip_base_layer(name), _with_base_layer(name)):
        if candidate in target_keys:
            return candidate
    return None


def expand_model_keys(keys: Iterable[str]) -> set[str]:
    """The sampler's parameter names plus the Hugging Face names its fused ones stand for, expanded twice (a
    renamed name can itself hold a fused one), so a trainer-side name can be checked with ``in``."""
    expanded = set(keys)
    for _ in range(2):
        extra: set[str] = set()
        for key in expanded:
            for fused, parts in _FUSED:
                if fused in key:
                    extra.update(key.replace(fused, part) for part in parts)
            for pattern, replacement in _RENAMES:
                if pattern.search(key):
                    extra.add(pattern.sub(replacement, key))
        expanded |= extra
    return expanded
