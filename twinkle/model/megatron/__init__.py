"""The Megatron-Core backend (CUDA + megatron-core + TransformerEngine + mcore_bridge). [never run here]

Imported lazily: ``import twinkle.model.megatron`` does not import Megatron; building a model without it (or without
a GPU) raises ``MissingDependencyError`` naming ``pip install 'twinkle-commons[megatron]'``.
"""

from typing import Any

__all__ = ["MegatronModel", "MegatronStrategy", "MultiLoraMegatronModel"]

_WHERE = {
    "MegatronModel": "twinkle.model.megatron.megatron_model",
    "MegatronStrategy": "twinkle.model.megatron.strategy",
    "MultiLoraMegatronModel": "twinkle.model.megatron.multi_lora",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'twinkle.model.megatron' has no attribute {name!r}")
