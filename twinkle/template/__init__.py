"""Templates turn trajectories into tokens and labels. Look one up by name with ``get_template('Template', ...)``."""

from __future__ import annotations

from typing import Any

from twinkle.template.base import TRUNCATION_STRATEGIES, Template
from twinkle.template.qwen import Qwen3_5Template

__all__ = ["TRUNCATION_STRATEGIES", "Qwen3_5Template", "Template", "get_template"]


def get_template(template: str | type[Template] | Template, **kwargs: Any) -> Template:
    """A ``Template`` from an instance (used as is), a class, or a name exported here (``'Template'``, ...).

    Raises:
        UnknownComponentError: an unknown name; the message lists the known ones.
    """
    import sys

    from twinkle.utils.construct import construct_class

    return construct_class(template, Template, sys.modules[__name__], kind="template", **kwargs)
