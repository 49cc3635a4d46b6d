"""Built-in preprocessors for common public datasets."""

from __future__ import annotations

import json
import re
from typing import Any

from twinkle.preprocessor.base import Preprocessor


def _user_data(**values: Any) -> list[tuple[str, str]]:
    return [(k, json.dumps(v)) for k, v in values.items()]


class SelfCognitionProcessor(Preprocessor):
    """``swift/self-cognition`` rows (``query``/``response`` with ``{{NAME}}``/``{{AUTHOR}}``) -> a 3-turn chat.

    Args:
        model_name: fills ``{{NAME}}``.
        model_author: fills ``{{AUTHOR}}``.
    """

    system = "You are a helpful assistant."

    def __init__(self, model_name: str = "twinkle robot", model_author: str = "twinkle lab") -> None:
        self.model_name = model_name
        self.model_author = model_author

    def _fill(self, text: str) -> str:
        return text.replace("{{NAME}}", self.model_name).replace("{{AUTHOR}}", self.model_author)

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "messages": [
                {"role": "system", "content": self.system},
                {"role": "user", "content": self._fill(row["query"])},
                {"role": "assistant", "content": self._fill(row["response"])},
            ]
        }


class AlpacaProcessor(Preprocessor):
    """Alpaca rows (``instruction``, optional ``input``, ``output``, optional ``system``) -> a chat."""

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt = row.get("instruction") or ""
        if row.get("input"):
            prompt = f"{prompt}\n{row['input']}" if prompt else row["input"]
        messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": row.get("output") or ""}]
        return {"messages": messages}


_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


class GSM8KProcessor(Preprocessor):
    """GSM8K rows (``question``, ``answer`` ending in ``#### N``) -> a prompt for RL, with ``ground_truth`` N.

    The reply is left for the model to generate; ``user_data`` carries ``ground_truth`` for the reward.
    """

    system = (
        "You are a helpful math assistant. Reason step by step, then give the final answer as \\boxed{answer}."
    )

    @staticmethod
    def extract_ground_truth(answer: str) -> str:
        match = _GSM8K_ANSWER.search(answer or "")
        return (match.group(1) if match else (answer or "")).replace(",", "").strip()

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "messages": [{"role": "system", "content": self.system}, {"role": "user", "content": row["question"]}],
            "user_data": _user_data(ground_truth=self.extract_ground_truth(row["answer"])),
        }


class CompetitionMathProcessor(Preprocessor):
    """MATH competition rows (``problem``, ``solution``) -> a chat to fine-tune on the worked solution."""

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "messages": [
                {"role": "user", "content": row["problem"]},
                {"role": "assistant", "content": row["solution"]},
            ]
        }


class CompetitionMathGRPOProcessor(Preprocessor):
    """MATH competition rows -> a prompt for RL, with the reference ``solution`` in ``user_data``."""

    system = "You are a helpful math assistant. Reason step by step, then give the final answer as \\boxed{answer}."

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "messages": [{"role": "system", "content": self.system}, {"role": "user", "content": row["problem"]}],
            "user_data": _user_data(solution=row["solution"]),
        }
