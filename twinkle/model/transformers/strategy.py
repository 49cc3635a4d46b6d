"""How ``TransformersModel`` spreads itself over the mesh: ``strategy='accelerate'`` or ``'native_fsdp'``.

``model.strategy`` holds one of these objects (upstream's attribute); it compares equal to its name, so
``model.strategy == 'native_fsdp'`` keeps working.

* ``AccelerateStrategy`` (the default): DDP over a dp-only mesh; FSDP2 full sharding when the mesh has fsdp > 1,
  hybrid (replicate over dp, shard over fsdp) when it has both. Upstream goes through ``accelerate.Accelerator``;
  ours calls the same torch primitives (``DistributedDataParallel``, ``fully_shard``) directly, so ``accelerate``
  plugin options are not read; ``ddp_config`` / ``fsdp_config`` go to those primitives.
* ``NativeFSDPStrategy``: torch ``fully_shard`` over **all mesh ranks flattened into one axis** (the dp/fsdp split
  is ignored), one unit per decoder layer (``_no_split_modules``), then the root.
"""

from __future__ import annotations

from typing import Any

import torch

from twinkle.model.transformers import _parallel

__all__ = ["AccelerateStrategy", "NativeFSDPStrategy", "get_strategy"]


class _Strategy:
    name = ""

    def __init__(self, ddp_config: dict | None = None, fsdp_config: dict | None = None) -> None:
        self.ddp_config, self.fsdp_config = ddp_config, fsdp_config

    def uses_fsdp(self, mesh: Any) -> bool:
        return _parallel.uses_fsdp(mesh, self.name)

    def wrap(self, model: torch.nn.Module, mesh: Any, device: torch.device) -> torch.nn.Module:
        if not _parallel.needs_wrap(mesh):
            return model
        if self.uses_fsdp(mesh):
            return _parallel.wrap_fsdp(model, mesh, device, self.fsdp_config)
        return _parallel.wrap_ddp(model, device, self.ddp_config)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.name
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AccelerateStrategy(_Strategy):
    name = "accelerate"


class NativeFSDPStrategy(_Strategy):
    name = "native_fsdp"


def get_strategy(strategy: Any, ddp_config: dict | None = None, fsdp_config: dict | None = None) -> _Strategy:
    """A strategy object from a name or an instance.

    Raises:
        ConfigError: an unknown name.
    """
    from twinkle.errors import ConfigError

    if isinstance(strategy, _Strategy):
        return strategy
    table = {"accelerate": AccelerateStrategy, "native_fsdp": NativeFSDPStrategy}
    if strategy not in table:
        raise ConfigError(f"strategy must be 'accelerate' or 'native_fsdp', got {strategy!r}")
    return table[strategy](ddp_config, fsdp_config)
