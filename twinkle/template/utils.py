"""Helpers for turning chat-template output into labels: character spans, token masks, truncation."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def supports_generation_mask(chat_template: str | None) -> bool:
    """True when the chat template marks assistant content with ``{% generation %}``."""
    return bool(chat_template and _GENERATION_TAG.search(chat_template))


def spans_to_token_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """1 for every token whose character range overlaps one of ``spans`` ([start, end) in the text), else 0.

    ``offsets`` is the tokenizer's ``offset_mapping`` as an ``[n, 2]`` array.
    """
    mask = np.zeros(len(offsets), dtype=bool)
    if len(offsets) == 0:
        return mask
    starts, ends = offsets[:, 0], offsets[:, 1]
    for span_start, span_end in spans:
        mask |= (ends > span_start) & (starts < span_end)
    return mask


def prefix_diff_spans(
    render, messages: list[dict], rounds: set[int] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Assistant spans found by rendering the conversation round by round (for templates without generation tags).

    ``render(messages, add_generation_prompt)`` returns text. The span of assistant round k is the text between
    the rendering of everything before it (with the generation prompt) and the rendering up to it.
    """
    full = render(messages, False)
    spans: list[tuple[int, int]] = []
    round_index = -1
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        round_index += 1
        if rounds is not None and round_index not in rounds:
            continue
        before = render(messages[:i], True) if i else ""
        upto = render(messages[: i + 1], False)
        if not full.startswith(upto) or not upto.startswith(before):
            # the template rewrites history (e.g. drops old reasoning): locate the content instead
            content = message.get("content") or ""
            pos = full.find(content, spans[-1][1] if spans else 0)
            if pos >= 0 and content:
                spans.append((pos, pos + len(content)))
            continue
        # the newline a template puts between turns is formatting, not something to train the model to emit
        end = len(before) + len(upto[len(before) :].rstrip("\n"))
        spans.append((len(before), end))
    return full, spans
