"""``CheckpointEngineManager``: one call per RL step syncs a trainer group's weights into a sampler group.

Both sides must be Ray proxies (``remote_group=...``): the engine moves weights between processes. In one process
(local mode) there is nothing to move: call ``sampler.receive_weights(model)`` instead.
"""

from __future__ import annotations

from typing import Any

from twinkle.checkpoint_engine._names import expand_model_keys
from twinkle.checkpoint_engine.base import CheckpointEngine
from twinkle.errors import ConfigError
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.checkpoint_engine")

__all__ = ["CheckpointEngineManager", "decide_backend_engine"]


def decide_backend_engine(platform: str) -> type[CheckpointEngine]:
    """The engine class for a platform: GPU -> NCCL, NPU -> HCCL, CPU -> gloo.

    Raises:
        NotImplementedError: any other platform.
    """
    kind = str(platform).upper()
    if kind in ("GPU", "CUDA"):
        from twinkle.checkpoint_engine.nccl import NCCLCheckpointEngine

        return NCCLCheckpointEngine
    if kind == "NPU":
        from twinkle.checkpoint_engine.hccl import HCCLCheckpointEngine

        return HCCLCheckpointEngine
    if kind == "CPU":
        from twinkle.checkpoint_engine.gloo import GlooCheckpointEngine

        return GlooCheckpointEngine
    raise NotImplementedError(f"no checkpoint engine for platform {platform!r}; use 'GPU', 'NPU' or 'CPU'")


def _wait(value: Any) -> Any:
    result = getattr(value, "result", None)
    return result() if callable(result) else value


def _platform_of(proxy: Any) -> str:
    kind = str(getattr(proxy.remote_mesh, "device_type", "cuda") or "cuda").lower()
    return {"cuda": "GPU", "gpu": "GPU", "npu": "NPU", "cpu": "CPU"}.get(kind, kind.upper())


class CheckpointEngineManager:
    """Syncs weights from ``model`` (a trainer group) to ``sampler`` (a sampler group).

    Args:
        model: a ``TransformersModel`` or ``MegatronModel`` built with ``remote_group=``.
        sampler: a ``TorchSampler`` or ``vLLMSampler`` built with ``remote_group=``.
        platform: ``'GPU'``, ``'NPU'`` or ``'CPU'``; default: the model group's device type (upstream's default is
            ``'GPU'``; ours follows the mesh, so the same script runs on CPU groups).

    Raises:
        ConfigError: ``model`` or ``sampler`` is not a Ray proxy.
        NotImplementedError: an unknown platform.
    """

    def __init__(self, model: Any, sampler: Any, platform: str | None = None) -> None:
        for role, proxy in (("model", model), ("sampler", sampler)):
            if not getattr(proxy, "remote_workers", None):
                raise ConfigError(
                    f"CheckpointEngineManager needs the {role} as a Ray proxy (built with remote_group=... after "
                    f"twinkle.initialize(mode='ray', ...)); in one process call sampler.receive_weights(model) instead"
                )
        self.model = model
        self.sampler = sampler
        self.platform = platform or _platform_of(model)
        self.backend_cls = decide_backend_engine(self.platform)
        self.base_sync_done = False
        self.peft_config: dict[str, Any] | None = None
        self.model_keys: set[str] | None = None

    def sync_weights(self, merge_and_sync: bool = True, adapter_name: str | None = None) -> None:
        """Send the model's current weights to every sampler replica (see the table in gpu.md §2.3).

        ``merge_and_sync=False`` (sampler with LoRA enabled): the base weights once, then the LoRA weights and
        config each call. ``merge_and_sync=True``: the base weights first, then the merged weights each call.
        """
        model, sampler = self.model, self.sampler
        trainer_world = model.remote_mesh.world_size
        rollout_world = sampler.remote_mesh.data_world_size
        metadata = _wait(model.prepare_checkpoint_engine([True] + [False] * (trainer_world - 1)))
        _wait(sampler.prepare_checkpoint_engine(False))
        trainer_kw, rollout_kw = self.backend_cls.build_topology(trainer_world, rollout_world, [metadata])
        # both sides at once: the master's TCPStore waits for every member, so one side alone would hang
        pending = [model.init_checkpoint_process_group(**trainer_kw),
                   sampler.init_checkpoint_process_group(**rollout_kw)]
        for call in pending:
            _wait(call)
        if self.base_sync_done and not merge_and_sync and self.peft_config is None:
            self.peft_config = _wait(model.get_peft_config_dict(adapter_name))
        if self.model_keys is None:
            self.model_keys = expand_model_keys(_wait(sampler.get_state_keys()))
        send = model.send_weights(adapter_name=adapter_name, base_sync_done=self.base_sync_done,
                                  merge_and_sync=merge_and_sync, model_keys=self.model_keys)
        receive = sampler.receive_weights(
            base_sync_done=self.base_sync_done, peft_config=None if merge_and_sync else self.peft_config
        )
        for call in (send, receive):
            _wait(call)
        _wait(model.finalize_checkpoint_engine())
        _wait(sampler.finalize_checkpoint_engine())
        self.base_sync_done = True
