"""Model id aliases: ``TWINKLE_MODEL_ID_ALIASES`` holds a JSON object mapping an id to another id or a path."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["build_model_alias_map", "load_model_alias_map", "resolve_model_id_alias"]


def build_model_alias_map(pairs: Any) -> dict[str, str]:
    """A ``{alias: target}`` dict from a mapping or ``(alias, target)`` pairs (keys and values as strings)."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return {str(k): str(v) for k, v in items}


def load_model_alias_map(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The aliases in ``TWINKLE_MODEL_ID_ALIASES`` (empty when unset).

    Raises:
        ValueError: the variable is not a JSON object.
    """
    raw = (os.environ if environ is None else environ).get("TWINKLE_MODEL_ID_ALIASES", "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TWINKLE_MODEL_ID_ALIASES is not JSON ({exc}); set it to an object like "
                         '{"Qwen/Qwen3-0.6B": "/models/qwen3"}') from exc
    if not isinstance(data, dict):
        raise ValueError("TWINKLE_MODEL_ID_ALIASES must be a JSON object mapping ids to ids or paths")
    return build_model_alias_map(data)


def resolve_model_id_alias(model_id: str, alias_map: dict[str, str] | None = None) -> str:
    """``model_id`` through the alias map (with and without an ``ms://`` / ``hf://`` prefix); unchanged if none."""
    aliases = load_model_alias_map() if alias_map is None else alias_map
    if model_id in aliases:
        return aliases[model_id]
    for prefix in ("ms://", "hf://"):
        if model_id.startswith(prefix) and model_id[len(prefix):] in aliases:
            return aliases[model_id[len(prefix):]]
    return model_id
