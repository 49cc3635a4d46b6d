"""The ``Patch`` interface: a fix applied to a model in place, by ``model.apply_patch(patch, **kw)``."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Patch"]


class Patch:
    """Base class of model patches.

    A patch changes a ``torch.nn.Module`` in place (wraps a forward, swaps a submodule, sets an attribute) to work
    around a problem of a model or library version. Subclasses implement ``__call__(module, *args, **kwargs)``;
    it may return a replacement module, which the model then uses, or ``None`` to keep the patched one.
    """

    def __call__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
