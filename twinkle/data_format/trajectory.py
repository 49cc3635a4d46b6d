"""``Message`` and ``Trajectory``: the standard form preprocessors emit and templates encode."""

from __future__ import annotations

import json
from typing import Any, TypedDict


class Message(TypedDict, total=False):
    """One chat turn. ``role`` is system, user, assistant or tool; ``content`` is text (or multimodal parts)."""

    role: str
    content: str | list[dict[str, Any]]
    tool_calls: list[dict[str, Any]]
    reasoning_content: str
    type: str
    tool_call_id: str


class ToolCall(TypedDict, total=False):
    """``{id, type: 'function', function: {name, arguments}}``; templates want ``arguments`` as a dict."""

    id: str
    type: str
    function: dict[str, Any]


class Tool(TypedDict, total=False):
    """``{type: 'function', function: {name, description, parameters}}``."""

    type: str
    function: dict[str, Any]


class Trajectory(TypedDict, total=False):
    """A conversation with everything needed to encode and reward it.

    ``user_data`` is a list of ``(key, json_text)`` pairs so that any value survives Arrow storage unchanged;
    read and write it with ``get_user_data`` / ``set_user_data``.
    """

    messages: list[Message]
    tools: list[dict[str, Any]]
    user_data: list[tuple[str, str]]
    images: list[Any]
    videos: list[Any]
    audios: list[Any]
    prompt: Any


def get_user_data(trajectory: Trajectory | dict, key: str, default: Any = None) -> Any:
    """The value stored under ``key`` in a trajectory's ``user_data`` (decoded from JSON)."""
    for item in trajectory.get("user_data") or []:
        if item[0] == key:
            return json.loads(item[1])
    return default


def set_user_data(trajectory: Trajectory | dict, key: str, value: Any) -> Trajectory | dict:
    """Store ``value`` (JSON-encoded) under ``key`` in ``user_data``, replacing an earlier value; returns it."""
    pairs = [tuple(p) for p in (trajectory.get("user_data") or []) if p[0] != key]
    pairs.append((key, json.dumps(value)))
    trajectory["user_data"] = pairs
    return trajectory


def pack_value(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``, with ``str()`` for what JSON cannot encode (upstream's helper)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def user_data_get(items: Any, key: str, default: Any = None) -> Any:
    """Upstream's reader: the first ``(key, value)`` pair's value; a str is JSON-decoded when it can be."""
    if not isinstance(items, list):
        return default
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == key:
            value = item[1]
            if not isinstance(value, str):
                return value
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
    return default
