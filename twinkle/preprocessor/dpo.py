"""Preference-data preprocessors: rows -> ``{'positive': Trajectory, 'negative': Trajectory}``.

``Dataset.encode()`` encodes each nested column separately (``Template.batch_encode``); a training script then
interleaves ``{**row['positive']}`` and ``{**row['negative']}`` into the chosen/rejected rows the preference losses
expect (``twinkle.dataloader.interleave_pairs`` does it).
"""

from __future__ import annotations

from typing import Any

from twinkle.preprocessor.base import Preprocessor

__all__ = ["EmojiDPOProcessor"]


class EmojiDPOProcessor(Preprocessor):
    """Rows with a prompt and two answers -> a chosen and a rejected chat.

    Upstream's defaults fit ``hjh0119/shareAI-Llama3-DPO-zh-en-emoji`` (prefer the Chinese answer with emoji).
    Missing keys read as ``''``.

    Args:
        system: an optional system prompt put first in both chats.
        chosen_key / rejected_key / prompt_key: the columns to read.
    """

    def __init__(
        self,
        system: str | None = None,
        chosen_key: str = "answer_zh",
        rejected_key: str = "answer_en",
        prompt_key: str = "prompt",
    ) -> None:
        self.system = system
        self.chosen_key = chosen_key
        self.rejected_key = rejected_key
        self.prompt_key = prompt_key

    def _chat(self, prompt: str, answer: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return {"messages": messages}

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt = row.get(self.prompt_key) or ""
        return {
            "positive": self._chat(prompt, row.get(self.chosen_key) or ""),
            "negative": self._chat(prompt, row.get(self.rejected_key) or ""),
        }
