"""Preprocessors turn raw rows into trajectories; filters drop rows. Find one by name with ``get_preprocessor``."""

from __future__ import annotations

from typing import Any

from twinkle.preprocessor._builtins import (
    AlpacaProcessor,
    CompetitionMathGRPOProcessor,
    CompetitionMathProcessor,
    GSM8KProcessor,
    SelfCognitionProcessor,
)
from twinkle.preprocessor.base import DataFilter, Filter, Preprocessor

__all__ = [
    "AlpacaProcessor",
    "CompetitionMathGRPOProcessor",
    "CompetitionMathProcessor",
    "DataFilter",
    "Filter",
    "GSM8KProcessor",
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
