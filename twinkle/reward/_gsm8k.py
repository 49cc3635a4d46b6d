"""GSM8K rewards: the final number against ``ground_truth``, and whether a final answer is marked at all."""

from __future__ import annotations

import re
from typing import Any

from twinkle.reward.base import Reward, completion_text, last_boxed

__all__ = ["GSM8KAccuracyReward", "GSM8KFormatReward", "extract_gsm8k_answer", "parse_number"]

_HASH_ANSWER = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


def extract_gsm8k_answer(text: str) -> str | None:
    """The final answer of a GSM8K reply: the last ``\\boxed{}``, else the text after the last ``####``."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    matches = _HASH_ANSWER.findall(text)
    if matches:
        return matches[-1]
    return None


def parse_number(text: Any) -> float | None:
    """A float from an answer such as ``'1,234'``, ``'$18.00'``, ``'\\frac{3}{4}'``, ``'18 dollars'``.

    Thousands commas, ``$``, ``%`` and ``\\text{...}`` wrappers are dropped; a plain ``\\frac{a}{b}`` of numbers
    is divided out; otherwise the last number in the text is taken. None when there is no number.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = _TEXT.sub(r"\1", str(text))
    s = s.replace(",", "").replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "").strip()
    s = s.rstrip(".")
    frac = re.fullmatch(r"-?\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    if frac:
        sign = -1.0 if s.startswith("-") else 1.0
        den = float(frac.group(2))
        return sign * float(frac.group(1)) / den if den else None
    try:
        return float(s)
    except ValueError:
        pass
    numbers = _NUMBER.findall(s)
    return float(numbers[-1]) if numbers else None


class GSM8KAccuracyReward(Reward):
    """1.0 when the completion's final answer is within ``tolerance`` of ``user_data['ground_truth']``, else 0.0.

    The final answer is the last ``\\boxed{}`` of the last assistant message, or, when there is no box, the text
    after its last ``####``; it is read as a number by ``parse_number`` (commas, ``$``, units dropped). A reply
    without an answer, or one that is not a number, scores 0.0.

    Args:
        tolerance: absolute tolerance of the comparison (the contract's 1e-5).

    Raises:
        ValueError: a trajectory has no ``ground_truth`` in its ``user_data`` (the message says how to add it), or
            the ground truth is not a number.
    """

    def __init__(self, tolerance: float = 1e-5) -> None:
        self.tolerance = tolerance

    def score(self, trajectory: Any) -> float:
        reference = self._reference(trajectory, ("ground_truth",), type(self).__name__)
        expected = parse_number(reference)
        if expected is None:
            raise ValueError(f"GSM8KAccuracyReward: ground_truth {reference!r} is not a number")
        got = parse_number(extract_gsm8k_answer(completion_text(trajectory)))
        return 1.0 if got is not None and abs(got - expected) <= self.tolerance else 0.0

    def __repr__(self) -> str:
        return f"GSM8KAccuracyReward(tolerance={self.tolerance})"


class GSM8KFormatReward(Reward):
    """1.0 when the completion marks a final answer, a non-empty ``\\boxed{...}`` or ``#### <answer>``, else 0.0.

    Needs no ground truth.
    """

    def score(self, trajectory: Any) -> float:
        answer = extract_gsm8k_answer(completion_text(trajectory))
        return 1.0 if answer is not None and answer.strip() else 0.0
