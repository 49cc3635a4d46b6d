"""OlympiadBench rows -> a prompt with optional images (upstream's ``twinkle.preprocessor.olympiad_bench``)."""

from __future__ import annotations

import json
from typing import Any

from twinkle.preprocessor.base import Preprocessor

__all__ = ["OlympiadBenchProcessor"]

_SYSTEM = {
    # upstream's Chinese prompt keeps its full-width punctuation
    "zh": "请逐步推理解答下面的问题，并把最终答案写在 \\boxed{} 中。"  # noqa: RUF001
    "如果有多个答案，请用逗号分隔写在同一个 \\boxed{} 中。",  # noqa: RUF001
    "en": "Please reason step by step and put your final answer within \\boxed{}. If there are multiple answers, "
    "separate them with commas inside one \\boxed{}.",
}


class OlympiadBenchProcessor(Preprocessor):
    """A system prompt (zh or en) asking for step-by-step working and the answer in ``\\boxed{}``; the user turn
    holds one image part per ``image_1..9``, then the context (prefixed with "background information" in
    Chinese) and the question (a plain string when there are no images). ``ground_truth`` is ``final_answer``
    joined with ``', '``.
    """

    def __init__(self, system: str | None = None, language: str = "zh") -> None:
        if language not in _SYSTEM:
            raise ValueError(f"language must be 'zh' or 'en', got {language!r}")
        self.system = system or _SYSTEM[language]

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        text = row.get("question") or ""
        if row.get("context"):
            text = f"背景信息：{row['context']}\n{text}"  # noqa: RUF001 - upstream's prefix
        images = [row[f"image_{i}"] for i in range(1, 10) if row.get(f"image_{i}")]
        content: Any = text
        if images:
            content = [{"type": "image", "url": url} for url in images] + [{"type": "text", "text": text}]
        answers = row.get("final_answer") or []
        if isinstance(answers, str):
            answers = [answers]
        return {
            "messages": [{"role": "system", "content": self.system}, {"role": "user", "content": content}],
            "user_data": [("ground_truth", json.dumps(", ".join(str(a) for a in answers)))],
        }
