"""Templates turn trajectories into tokens and labels. Look one up by name with ``get_template('Template', ...)``."""

from __future__ import annotations

from typing import Any

from twinkle.errors import not_built_attributes
from twinkle.template.base import TRUNCATION_STRATEGIES, Template
from twinkle.template.qwen import Qwen3_5Template
from twinkle.template.tools import (
    ClineParser,
    HermesQwenParser,
    ReActParser,
    ToolCallParser,
    ToolCallRegistry,
    VCPParser,
)

__all__ = [
    "TRUNCATION_STRATEGIES",
    "ClineParser",
    "HermesQwenParser",
    "Qwen3_5Template",
    "ReActParser",
    "Template",
    "ToolCallParser",
    "ToolCallRegistry",
    "VCPParser",
    "get_template",
]

__getattr__ = not_built_attributes("twinkle.template", {
    "DeepseekV4Template": "twinkle.template.DeepseekV4Template: the DeepSeek-V4 template (its own encoder and DSML "
    "tool-call blocks) is not built in Twinkle Commons; use Template or Qwen3_5Template",
})


def get_template(template: str | type[Template] | Template, **kwargs: Any) -> Template:
    """A ``Template`` from an instance (used as is), a class, or a name exported here (``'Template'``, ...).

    Raises:
        UnknownComponentError: an unknown name; the message lists the known ones.
    """
    import sys

    from twinkle.utils.construct import construct_class

    return construct_class(template, Template, sys.modules[__name__], kind="template", **kwargs)
