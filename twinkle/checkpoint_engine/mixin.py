"""``CheckpointEngineMixin``: the remote methods a trainer or a sampler needs to take part in a weight sync.

Mixed into ``TransformersModel``, ``MegatronModel``, ``TorchSampler`` and ``vLLMSampler``. The engine is created on
first use from the device the component runs on: CUDA -> ``NCCLCheckpointEngine``, CPU -> ``GlooCheckpointEngine``
(``TWINKLE_CKPT_ENGINE=gloo|nccl`` forces one). Trainers also implement ``send_weights`` through
:meth:`iter_sync_weights`, which yields the ``(name, tensor)`` pairs to send.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from twinkle.checkpoint_engine._util import run_coroutine
from twinkle.checkpoint_engine.base import CheckpointEngine
from twinkle.errors import ConfigError
from twinkle.infra import remote_function

__all__ = ["CheckpointEngineMixin", "engine_for_device"]

BUCKET_BYTES = 3072 << 20  # upstream's bucket for GPU engines


def _one(value: Any) -> Any:
    """Arguments sliced per worker arrive as one-element lists: unwrap them."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


def engine_for_device(device_type: str) -> CheckpointEngine:
    """A new engine for a process on ``device_type`` ('cuda', 'cpu', 'npu')."""
    forced = os.environ.get("TWINKLE_CKPT_ENGINE", "").lower()
    kind = forced or {"cuda": "nccl", "gpu": "nccl", "npu": "hccl"}.get(device_type, "gloo")
    if kind == "nccl":
        from twinkle.checkpoint_engine.nccl import NCCLCheckpointEngine

        return NCCLCheckpointEngine(int(os.environ.get("TWINKLE_CKPT_BUCKET_BYTES", BUCKET_BYTES)))
    if kind == "hccl":
        from twinkle.checkpoint_engine.hccl import HCCLCheckpointEngine

        return HCCLCheckpointEngine(BUCKET_BYTES, rebuild_group=False)
    if kind == "gloo":
        from twinkle.checkpoint_engine.gloo import DEFAULT_BUCKET_BYTES, GlooCheckpointEngine

        return GlooCheckpointEngine(int(os.environ.get("TWINKLE_CKPT_BUCKET_BYTES", DEFAULT_BUCKET_BYTES)))
    raise ConfigError(f"TWINKLE_CKPT_ENGINE={forced!r}: use gloo, nccl or hccl")


class CheckpointEngineMixin:
    """Checkpoint-engine endpoints, called by ``CheckpointEngineManager`` through Ray proxies."""

    _checkpoint_engine: CheckpointEngine | None = None

    def _checkpoint_device_type(self) -> str:
        device = getattr(self, "device", None)
        if isinstance(device, torch.device):
            return device.type
        return str(getattr(getattr(self, "device_mesh", None), "device_type", "cpu") or "cpu").lower()

    def get_checkpoint_engine(self) -> CheckpointEngine:
        """This component's engine (created on first use; one per process)."""
        if self._checkpoint_engine is None:
            self._checkpoint_engine = engine_for_device(self._checkpoint_device_type())
        return self._checkpoint_engine

    @remote_function(dispatch="slice", collect="first")
    def prepare_checkpoint_engine(self, is_master: Any) -> Any:
        """Mark the sync master and allocate buffers; the master returns its connection metadata."""
        engine = self.get_checkpoint_engine()
        engine.is_master = bool(_one(is_master))
        return engine.prepare()

    @remote_function(dispatch="slice", lazy_collect=True)
    def init_checkpoint_process_group(self, rank: Any, world_size: Any, master_metadata: Any) -> None:
        """Join the sync group (lazy: the manager starts trainer and sampler sides together, then waits)."""
        self.get_checkpoint_engine().init_process_group(_one(rank), _one(world_size), _one(master_metadata))

    @remote_function(dispatch="all")
    def finalize_checkpoint_engine(self) -> None:
        if self._checkpoint_engine is not None:
            self._checkpoint_engine.finalize()

    # ---------------------------------------------------------------- trainer side

    def iter_sync_weights(
        self, adapter_name: str | None, base_sync_done: bool, merge_and_sync: bool, model_keys: Any
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The ``(name, tensor)`` pairs a trainer sends (implemented by models)."""
        raise NotImplementedError(f"{type(self).__name__} is not a trainer: it cannot send weights")

    @remote_function(dispatch="all", lazy_collect=True)
    def send_weights(self, adapter_name: str | None = None, base_sync_done: bool = False,
                     merge_and_sync: bool = False, model_keys: Any = None) -> None:
        """Stream this trainer's weights to the samplers (every trainer rank runs it: the weights may come out of
        collectives; only sync rank 0 transmits).

        First call: the base weights without LoRA keys; later calls: with ``merge_and_sync=False`` the LoRA weights
        only, with ``merge_and_sync=True`` the adapter merged into every non-LoRA weight.
        """
        engine = self.get_checkpoint_engine()
        weights = self.iter_sync_weights(adapter_name, base_sync_done, merge_and_sync, model_keys)
        run_coroutine(engine.send_weights(weights))
