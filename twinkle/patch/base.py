"""The ``Patch`` interface: a fix applied to a model in place, by ``model.apply_patch(patch, **kw)`` or
``twinkle.patch.apply_patch(module, patch)``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["Patch", "apply_context", "apply_patch"]


class Patch:
    """Base class of model patches.

    A patch changes a ``torch.nn.Module`` in place (wraps a forward, swaps a submodule, sets an attribute) to work
    around a problem of a model or library version. Subclasses implement ``__call__(module, *args, **kwargs)``;
    it may return a replacement module, which the model then uses, or ``None`` to keep the patched one.
    ``unpatch(module)`` undoes it where the patch knows how (the default does nothing).
    """

    def __call__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module | None:
        raise NotImplementedError

    def unpatch(self, module: torch.nn.Module) -> None:
        """Undo ``__call__`` on ``module``; a patch that cannot be undone leaves this a no-op."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _resolve(patch: Any, **kwargs: Any) -> Patch:
    import sys

    from twinkle.utils.construct import construct_class

    return construct_class(patch, Patch, sys.modules["twinkle.patch"], kind="patch", **kwargs)


def apply_patch(module: torch.nn.Module, patch: Any, *args: Any, **kwargs: Any) -> Any:
    """Apply a patch (instance, class or name exported by ``twinkle.patch``) to ``module``; returns what the
    patch returned (a replacement module, or None)."""
    return _resolve(patch)(module, *args, **kwargs)


@contextlib.contextmanager
def apply_context(module: torch.nn.Module, patch: Any, *args: Any, **kwargs: Any) -> Iterator[Patch]:
    """Apply a patch for the body of a ``with`` block, then ``unpatch`` it."""
    instance = _resolve(patch)
    instance(module, *args, **kwargs)
    try:
        yield instance
    finally:
        instance.unpatch(module)
