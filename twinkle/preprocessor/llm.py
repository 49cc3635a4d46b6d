"""Text (LLM) preprocessors for common public datasets; upstream's ``twinkle.preprocessor.llm``.

``user_data`` values are stored JSON-encoded (``(key, json)`` pairs, so any value survives Arrow storage);
upstream stores raw values. Readers decode either way: ``get_user_data`` and upstream's ``user_data_get``
(JSON-decode, else the raw string) give the same value back.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twinkle.preprocessor.base import Preprocessor

__all__ = [
    "AlpacaProcessor",
    "CompetitionMathGRPOProcessor",
    "CompetitionMathProcessor",
    "CountdownProcessor",
    "GSM8KProcessor",
    "SelfCognitionProcessor",
]


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

    The reply is left for the model to generate (unless ``add_assistant``); ``user_data`` carries
    ``ground_truth`` (the number after ``####``, commas removed) for the reward.

    Args:
        system: the system prompt; default asks for step-by-step reasoning and a boxed answer.
        add_assistant: also append the dataset's worked answer as the assistant turn (for SFT on GSM8K).
    """

    system = (
        "You are a helpful math assistant. Reason step by step, then give the final answer as \\boxed{answer}."
    )

    def __init__(self, system: str | None = None, add_assistant: bool = False) -> None:
        if system is not None:
            self.system = system
        self.add_assistant = add_assistant

    @staticmethod
    def extract_ground_truth(answer: str) -> str:
        match = _GSM8K_ANSWER.search(answer or "")
        return (match.group(1) if match else (answer or "")).replace(",", "").strip()

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": row["question"]}]
        if self.add_assistant:
            messages.append({"role": "assistant", "content": row["answer"]})
        return {
            "messages": messages,
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


class CountdownProcessor(Preprocessor):
    """Countdown rows (``nums`` and the target in ``response``, else ``target``, else 0) -> a prompt asking for an
    equation over the numbers that equals the target, reasoning in ``<think>`` and the equation in ``<answer>``.

    ``user_data`` holds ``[{'target': t, 'nums': nums}]`` (upstream's shape: a dict, not key/value pairs).
    """

    system = (
        "You are a helpful assistant. You first think about the reasoning process in the mind and then provide "
        "the user with the answer."
    )

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        nums = list(row.get("nums") or [])
        target = row.get("response")
        if target is None:
            target = row.get("target", 0)
        prompt = (
            f"Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic "
            f"operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
            f"tags. And return the final equation in <answer> </answer> tags, for example "
            f"<answer> (1 + 2) / 3 </answer>."
        )
        return {
            "messages": [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}],
            "user_data": [{"target": target, "nums": nums}],
        }
