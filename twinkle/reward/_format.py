"""``FormatReward``: the reply reasons in ``<think>`` and answers in ``<answer>``."""

from __future__ import annotations

import re
from typing import Any

from twinkle.reward.base import Reward, completion_text

__all__ = ["FormatReward"]

_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


class FormatReward(Reward):
    """1.0 when the whole completion is ``<think>...</think>`` then ``<answer>...</answer>``, else 0.0.

    The same rule as TRL's ``format_reward`` (R1 style): both blocks, in that order, nothing outside them but
    whitespace. When the template split the reasoning off into the message's ``reasoning_content`` (thinking
    models), it is put back as ``<think>{reasoning_content}</think>`` in front of the content before matching.
    """

    def score(self, trajectory: Any) -> float:
        text = completion_text(trajectory)
        if isinstance(trajectory, dict):
            last = next((m for m in reversed(trajectory.get("messages") or []) if m.get("role") == "assistant"), None)
            if last and last.get("reasoning_content") and "<think>" not in text:
                text = f"<think>{last['reasoning_content']}</think>{text}"
        return 1.0 if _FORMAT.fullmatch(text.strip()) else 0.0
