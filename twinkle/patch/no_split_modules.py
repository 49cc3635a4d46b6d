"""``NoSplitModulesPatch``: tell FSDP which module classes are its wrapping units (``_no_split_modules``)."""

from __future__ import annotations

from typing import Any

import torch

from twinkle.patch.base import Patch

__all__ = ["NoSplitModulesPatch"]


class NoSplitModulesPatch(Patch):
    """Set ``_no_split_modules`` on the model (and the base model under a PEFT wrapper).

    Args:
        module_names: the class names FSDP wraps one unit each (upstream's default: Qwen3.5's decoder layer).
    """

    def __init__(self, module_names: set[str] | list[str] | None = None) -> None:
        self.module_names = set(module_names or {"Qwen3_5DecoderLayer"})
        self._previous: dict[int, Any] = {}

    def _targets(self, module: torch.nn.Module) -> list[Any]:
        targets = [module]
        get_base = getattr(module, "get_base_model", None)
        if callable(get_base):
            targets.append(get_base())
        return targets

    def __call__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        for target in self._targets(module):
            self._previous[id(target)] = getattr(target, "_no_split_modules", None)
            target._no_split_modules = sorted(self.module_names)

    def unpatch(self, module: torch.nn.Module) -> None:
        for target in self._targets(module):
            if id(target) in self._previous:
                target._no_split_modules = self._previous.pop(id(target))
