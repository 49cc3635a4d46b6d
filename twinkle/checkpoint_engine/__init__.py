"""Checkpoint engines: sync a trainer's weights into samplers that run in other processes (RL loops).

* ``CheckpointEngineManager(model, sampler).sync_weights(merge_and_sync=...)`` once per step (Ray mode).
* ``GlooCheckpointEngine``: CPU processes (tested in CI). ``NCCLCheckpointEngine``: GPUs (never run here: this
  project has no GPU machine). ``HCCLCheckpointEngine``: Ascend NPUs (not ported).
* ``CheckpointEngineMixin``: the endpoints models and samplers expose to the manager.
"""

from twinkle.checkpoint_engine.base import CheckpointEngine, MasterMetadata, TensorMeta
from twinkle.checkpoint_engine.gloo import GlooCheckpointEngine
from twinkle.checkpoint_engine.hccl import HCCLCheckpointEngine
from twinkle.checkpoint_engine.manager import CheckpointEngineManager, decide_backend_engine
from twinkle.checkpoint_engine.mixin import CheckpointEngineMixin
from twinkle.checkpoint_engine.nccl import NCCLCheckpointEngine

__all__ = [
    "CheckpointEngine",
    "CheckpointEngineManager",
    "CheckpointEngineMixin",
    "GlooCheckpointEngine",
    "HCCLCheckpointEngine",
    "MasterMetadata",
    "NCCLCheckpointEngine",
    "TensorMeta",
    "decide_backend_engine",
]
