"""Model patches, applied with ``model.apply_patch(PatchClass | instance | 'Name', **kw)`` or
``apply_patch(module, patch)`` / ``with apply_context(module, patch): ...``."""

from twinkle.patch.base import Patch, apply_context, apply_patch
from twinkle.patch.no_split_modules import NoSplitModulesPatch

__all__ = ["NoSplitModulesPatch", "Patch", "apply_context", "apply_patch"]
