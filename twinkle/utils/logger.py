"""One logger namespace for the library: ``twinkle.*``."""

from __future__ import annotations

import logging

_configured = False


def get_logger(name: str = "twinkle") -> logging.Logger:
    """A logger under ``twinkle`` with a stream handler on the root ``twinkle`` logger (added once)."""
    global _configured
    root = logging.getLogger("twinkle")
    if not _configured:
        if not root.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[%(levelname)s:%(name)s] %(message)s"))
            root.addHandler(handler)
            root.setLevel(logging.INFO)
        _configured = True
    return logging.getLogger(name if name.startswith("twinkle") else f"twinkle.{name}")
