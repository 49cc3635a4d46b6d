"""Model patches, applied with ``model.apply_patch(PatchClass | instance | 'Name', **kw)``."""

from twinkle.patch.base import Patch

__all__ = ["Patch"]
