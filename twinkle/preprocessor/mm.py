"""Multimodal preprocessors (upstream's ``twinkle.preprocessor.mm``)."""

from __future__ import annotations

import json
import re
from typing import Any

from twinkle.preprocessor.base import Preprocessor

__all__ = ["CLEVRProcessor"]

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class CLEVRProcessor(Preprocessor):
    """CLEVR rows (``image``, ``problem``, ``solution``) -> a system text part and a user turn with the image and
    the question; ``user_data`` holds ``ground_truth`` (the first ``<answer>`` content, else the whole solution)
    and ``solution``.
    """

    default_system = (
        "A conversation between User and Assistant. The user asks a question about the image, and the Assistant "
        "solves it. The assistant first thinks about the reasoning process in the mind and then provides the user "
        "with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
        "</answer> tags, respectively."
    )

    def __init__(self, system: str | None = None) -> None:
        self.system = system or self.default_system

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        solution = row.get("solution") or ""
        match = _ANSWER.search(solution)
        ground_truth = match.group(1).strip() if match else solution
        return {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": self.system}]},
                {"role": "user", "content": [{"type": "image", "image": row.get("image")},
                                             {"type": "text", "text": row.get("problem") or ""}]},
            ],
            "user_data": [("ground_truth", json.dumps(ground_truth)), ("solution", json.dumps(solution))],
        }
