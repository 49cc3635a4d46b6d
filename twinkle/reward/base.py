"""The ``Reward`` interface: ``reward(trajectories) -> list[float]``, one score per trajectory.

A trajectory is the ``twinkle.data_format.Trajectory`` dict the preprocessors emit and the sampler completes:
``messages`` (the prompt, then the generated reply as the **last assistant message**) and ``user_data``
(``(key, json)`` pairs, read with ``get_user_data``). The rewards here read:

* the completion: the ``content`` of the last ``assistant`` message (text parts joined when the content is a
  list of multimodal parts); a trajectory without an assistant message scores as an empty completion;
* the reference answer: ``user_data['ground_truth']`` (what ``GSM8KProcessor`` stores), and for ``MathReward``
  also ``user_data['solution']`` (what ``CompetitionMathGRPOProcessor`` stores).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from twinkle.data_format.trajectory import get_user_data

__all__ = ["Reward", "completion_text", "last_boxed"]


def completion_text(trajectory: Any) -> str:
    """The text of the last assistant message of ``trajectory`` ('' when it has none).

    A plain string is taken as the completion itself, so rewards can be tried on raw text.
    """
    if isinstance(trajectory, str):
        return trajectory
    for message in reversed(trajectory.get("messages") or []):
        if message.get("role") != "assistant":
            continue
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return ""


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_at = text.find("{", start)
    if open_at < 0:
        # "\boxed 5" (no braces): the token after the space
        match = re.match(r"\\boxed\s+([^\s$]+)", text[start:])
        return match.group(1) if match else None
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None  # unbalanced: the reply was cut off inside the box


class Reward:
    """Base class: ``__call__(trajectories) -> list[float]``, one float per trajectory, in order."""

    def __call__(self, trajectories: Sequence[Any]) -> list[float]:
        if isinstance(trajectories, dict):
            raise TypeError(
                f"{type(self).__name__} takes a list of trajectories; wrap a single one as [trajectory]"
            )
        return [float(self.score(t)) for t in trajectories]

    def score(self, trajectory: Any) -> float:
        raise NotImplementedError

    @staticmethod
    def _reference(trajectory: Any, keys: Sequence[str], reward: str) -> Any:
        data = trajectory if isinstance(trajectory, dict) else {}
        for key in keys:
            value = get_user_data(data, key)
            if value is not None:
                return value
        raise ValueError(
            f"{reward} needs the reference answer in the trajectory's user_data under {' or '.join(map(repr, keys))}; "
            "preprocess the data with GSM8KProcessor / CompetitionMathGRPOProcessor, or store it with "
            "twinkle.data_format.set_user_data(trajectory, 'ground_truth', value)"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
