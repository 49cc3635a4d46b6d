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
