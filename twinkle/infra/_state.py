"""The process-wide twinkle state: run mode, device groups, global mesh. One place, read by every mode.

The Ray helper (``twinkle.infra.ray``) reads these accessors, and marks its worker processes with
``mark_worker()`` so a component built inside an actor is built locally instead of spawning more actors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

MODES = ("local", "ray")


@dataclass
class _State:
    mode: str | None = None
    groups: list[Any] = field(default_factory=list)
    global_mesh: Any = None
    seed: int = 42
    lazy_collect: bool = True
    name: str | None = None
    notifier: Any = None
    initialized: bool = False
    worker: bool = False


_state = _State()


def get_mode() -> str:
    """``'local'`` or ``'ray'``: what ``initialize`` chose, else ``TWINKLE_MODE``, else local."""
    return _state.mode or os.environ.get("TWINKLE_MODE", "local") or "local"


def get_groups() -> list[Any]:
    return list(_state.groups)


def get_global_mesh() -> Any:
    """The ``DeviceMesh`` given to (or made by) ``initialize``; ``None`` before it ran."""
    return _state.global_mesh


def get_seed() -> int:
    return _state.seed


def get_lazy_collect() -> bool:
    return _state.lazy_collect


def get_name() -> str | None:
    return _state.name


def get_notifier() -> Any:
    return _state.notifier


def is_initialized() -> bool:
    return _state.initialized


def mark_worker(flag: bool = True) -> None:
    """Mark this process as a remote worker (a Ray actor), not the driver."""
    _state.worker = flag


def is_driver() -> bool:
    """True in the process that runs the user's script; False inside Ray workers."""
    return not _state.worker and os.environ.get("TWINKLE_RAY_WORKER", "") not in ("1", "true")


def set_state(**values: Any) -> None:
    for key, value in values.items():
        if not hasattr(_state, key):
            raise AttributeError(f"no twinkle state field {key!r}")
        setattr(_state, key, value)


def reset() -> None:
    """Forget everything ``initialize`` set (tests use this between cases)."""
    global _state
    _state = _State()
