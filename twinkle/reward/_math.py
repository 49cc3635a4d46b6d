"""``MathReward``: the final answer against the reference, equal as strings after normalisation or as sympy
expressions."""

from __future__ import annotations

import re
from typing import Any

from twinkle.reward.base import Reward, completion_text, last_boxed

__all__ = ["MathReward", "math_equal", "normalize_answer"]

_MAX_SYMPY_CHARS = 200  # longer answers are compared as strings only: sympy.simplify can take minutes on them
_SAFE_TEXT = re.compile(r"[0-9A-Za-z+\-*/().\s]*")
_SAFE_NAMES = {"sqrt", "pi", "oo", "sin", "cos", "tan", "log", "ln", "exp"}
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _strip_command_with_arg(s: str, command: str) -> str:
    # \text{abc} -> abc, braces balanced enough for answers
    return re.sub(r"\\" + command + r"\s*\{([^{}]*)\}", r"\1", s)


def normalize_answer(answer: str) -> str:
    """A canonical text form of a LaTeX answer, for the string comparison before sympy.

    Drops ``$``, spaces, ``\\left``/``\\right``, ``\\!``/``\\,``, ``^\\circ``, ``\\%``, ``\\text{}``/``\\mathrm{}``
    wrappers, a trailing period and a leading ``x=``; ``\\dfrac``/``\\tfrac`` become ``\\frac``.
    """
    s = str(answer).strip()
    for cmd in ("text", "textbf", "mathrm", "mbox", "boxed"):
        s = _strip_command_with_arg(s, cmd)
    for old, new in (
        ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
        ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^\\circ", ""), ("^{\\circ}", ""),
        ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), ("\\displaystyle", ""),
    ):
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"^[a-zA-Z]\s*=", "", s)  # "x=5" -> "5"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")  # thousands separators, but not tuples like (1,2)
    return s


def _latex_to_sympy_text(s: str) -> str:
    """A small LaTeX -> sympy-syntax rewrite covering the answers MATH uses (fractions, roots, powers, pi)."""
    for _ in range(10):  # nested \frac{\frac{..}{..}}{..}: innermost first
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        new = re.sub(r"\\frac(\d)(\d)", r"((\1)/(\2))", new)  # \frac12
        new = re.sub(r"\\sqrt\[([^{}\[\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", new)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        new = re.sub(r"\\sqrt(\d+)", r"sqrt(\1)", new)
        if new == s:
            break
        s = new
    for old, new in (
        ("\\cdot", "*"), ("\\times", "*"), ("\\div", "/"), ("\\pi", "pi"), ("\\infty", "oo"),
        ("^", "**"), ("{", "("), ("}", ")"), ("\\", ""),
    ):
        s = s.replace(old, new)
    return s


def _to_sympy(answer: str) -> Any:
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    text = _latex_to_sympy_text(answer)
    # parse_expr evaluates Python: let only arithmetic, single-letter symbols and a few functions through, so a
    # generated completion can never run code
    if not _SAFE_TEXT.fullmatch(text) or any(
        len(name) > 1 and name not in _SAFE_NAMES for name in re.findall(r"[A-Za-z_]+", text)
    ):
        raise ValueError(f"not a plain math expression: {text!r}")
    transformations = (*standard_transformations, implicit_multiplication_application, convert_xor)
    return parse_expr(text, transformations=transformations, evaluate=True)


def _split_top_level(s: str) -> list[str]:
    """``(1,2)`` / ``1,2`` -> ['1', '2'] (commas not inside brackets); other answers -> [s]."""
    body = s
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        body = s[1:-1]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts if len(parts) > 1 else [s]


def _sympy_equal(a: str, b: str) -> bool:
    if len(a) > _MAX_SYMPY_CHARS or len(b) > _MAX_SYMPY_CHARS:
        return False
    try:
        import sympy

        ea, eb = _to_sympy(a), _to_sympy(b)
        diff = sympy.simplify(ea - eb)
        if diff == 0:
            return True
        value = complex(sympy.N(diff)) if not diff.free_symbols else None
        return value is not None and abs(value) <= 1e-6
    except Exception:  # noqa: BLE001 - an answer sympy cannot read is simply not equal
        return False


def math_equal(answer: str | None, reference: str | None) -> bool:
    """True when two final answers are the same: equal after ``normalize_answer``, or equal element by element
    for tuples, or ``sympy.simplify(a - b) == 0`` (numerically within 1e-6 when both are constants)."""
    if answer is None or reference is None:
        return False
    a, b = normalize_answer(answer), normalize_answer(reference)
    if not a:
        return False
    if a == b:
        return True
    pa, pb = _split_top_level(a), _split_top_level(b)
    if len(pa) != len(pb):
        return False
    if len(pa) > 1:
        return all(x == y or _sympy_equal(x, y) for x, y in zip(pa, pb, strict=True))
    return _sympy_equal(a, b)


class MathReward(Reward):
    """1.0 when the completion's final answer equals the reference answer mathematically, else 0.0.

    * Final answer: the last ``\\boxed{}`` of the last assistant message, else the last ``<answer>...</answer>``
      block; a reply with neither scores 0.0.
    * Reference: ``user_data['ground_truth']`` when present, else ``user_data['solution']`` (the worked MATH
      solution; its last ``\\boxed{}`` is taken, or all of it when it has none).
    * Equality (``math_equal``): normalised strings first (``\\dfrac``->``\\frac``, units and ``$`` dropped),
      then sympy: the LaTeX is rewritten to sympy syntax (``\\frac``, ``\\sqrt``, ``^``, ``\\pi``, implicit
      products) and ``simplify(a - b) == 0`` decides. Tuples compare element by element. Answers sympy cannot
      read, or longer than 200 characters, only match as strings (this is not a full LaTeX parser: sets,
      intervals with open/closed ends and matrices compare as strings).

    Raises:
        ValueError: a trajectory has neither ``ground_truth`` nor ``solution`` in its ``user_data``.
    """

    def score(self, trajectory: Any) -> float:
        reference = self._reference(trajectory, ("ground_truth", "solution"), "MathReward")
        reference = str(reference)
        boxed_ref = last_boxed(reference)
        if boxed_ref is not None:
            reference = boxed_ref
        text = completion_text(trajectory)
        answer = last_boxed(text)
        if answer is None:
            tags = _ANSWER_TAG.findall(text)
            answer = tags[-1] if tags else None
        return 1.0 if math_equal(answer, reference) else 0.0
