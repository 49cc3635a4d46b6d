"""``MultiLoraMegatronModel``: several tenants' LoRA slots on one Megatron model (gpu.md §3.4). [not ported]

Only the constructor's dependency check is here: building one without CUDA + Megatron raises
``MissingDependencyError``; with them it raises ``NotImplementedError`` (the slot logic of §4 is not ported).
"""

from __future__ import annotations

from typing import Any

from twinkle.model.megatron.strategy import require_megatron

__all__ = ["MultiLoraMegatronModel"]


class MultiLoraMegatronModel:
    """Not ported: see the module docstring."""

    def __init__(self, *args: Any, max_loras: int = 5, max_r: int = 32, max_length: int = 8192,
                 target_modules: Any = "all-linear", **kwargs: Any) -> None:
        require_megatron("MultiLoraMegatronModel")
        raise NotImplementedError(
            "MultiLoraMegatronModel's tenant slots are not ported to twinkle-commons; use MegatronModel with one "
            "adapter, or sync tenants through the filesystem (model.save + sampler.sample(adapter_path=...))"
        )
