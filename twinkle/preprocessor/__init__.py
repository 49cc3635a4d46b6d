"""Preprocessors turn raw rows into trajectories; filters drop rows. Find one by name with ``get_preprocessor``.

Modules as upstream: ``.llm`` (Alpaca, CompetitionMath(+GRPO), Countdown, GSM8K, SelfCognition), ``.dpo``
(EmojiDPOProcessor), ``.mm`` (CLEVR), ``.olympiad_bench``, ``.base`` (Preprocessor, DataFilter); all re-exported.
"""

from __future__ import annotations

from typing import Any

from twinkle.preprocessor.base import DataFilter, Filter, Preprocessor
from twinkle.preprocessor.dpo import EmojiDPOProcessor
from twinkle.preprocessor.llm import (
    AlpacaProcessor,
    CompetitionMathGRPOProcessor,
    CompetitionMathProcessor,
    CountdownProcessor,
    GSM8KProcessor,
    SelfCognitionProcessor,
)
from twinkle.preprocessor.mm import CLEVRProcessor
from twinkle.preprocessor.olympiad_bench import OlympiadBenchProcessor

__all__ = [
    "AlpacaProcessor",
    "CLEVRProcessor",
    "CompetitionMathGRPOProcessor",
    "CompetitionMathProcessor",
    "CountdownProcessor",
    "DataFilter",
    "EmojiDPOProcessor",
    "Filter",
    "GSM8KProcessor",
    "OlympiadBenchProcessor",
    "Preprocessor",
    "SelfCognitionProcessor",
    "get_preprocessor",
]


def get_preprocessor(preprocessor: str | type[Preprocessor] | Preprocessor, **init_args: Any) -> Preprocessor:
    """A ``Preprocessor`` from an instance, a class, or a name exported here (``'SelfCognitionProcessor'``, ...).

    Raises:
        UnknownComponentError: an unknown name; the message lists the known ones.
    """
    import sys

    from twinkle.utils.construct import construct_class

    return construct_class(preprocessor, Preprocessor, sys.modules[__name__], kind="preprocessor", **init_args)
