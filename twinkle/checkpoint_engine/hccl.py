"""``HCCLCheckpointEngine``: the Ascend NPU engine of upstream, named here so scripts import; not ported."""

from __future__ import annotations

from typing import Any

from twinkle.checkpoint_engine.base import CheckpointEngine
from twinkle.errors import MissingDependencyError

__all__ = ["HCCLCheckpointEngine"]


class HCCLCheckpointEngine(CheckpointEngine):
    """Not ported: building one raises :class:`MissingDependencyError`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise MissingDependencyError(
            "HCCLCheckpointEngine (Ascend NPU) is not ported to twinkle-commons; on NVIDIA GPUs use "
            "NCCLCheckpointEngine (pip install 'twinkle-commons[vllm]'), on the CPU GlooCheckpointEngine"
        )

    prepare = init_process_group = send_weights = receive_weights = finalize = None  # type: ignore[assignment]
