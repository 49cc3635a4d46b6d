"""The checkpoint-engine interface: stream named tensors from trainer ranks to sampler ranks in buckets.

The design follows verl: the trainer's rank 0 is sync rank 0 (it transmits), the other trainer ranks take part in
producing the weights (their collectives) but get sync rank -1, and each sampler replica is one receiver, sync ranks
1..N. A private process group joins them, separate from each side's default group.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import torch

__all__ = ["CheckpointEngine", "MasterMetadata", "TensorMeta"]


class TensorMeta(TypedDict, total=False):
    """Where one tensor (or one chunk of it) lies in a bucket.

    ``offset`` is in bytes from the bucket's start. A tensor larger than a bucket travels in chunks: then ``nbytes``
    is the chunk's size, ``chunk_offset`` its place in the tensor's bytes and ``total_nbytes`` the tensor's size.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int
    chunk_offset: int
    total_nbytes: int


@dataclass(frozen=True)
class MasterMetadata:
    """How receivers reach sync rank 0: the host and port of its TCPStore (and, for NCCL, its ZMQ publisher)."""

    store_host: str
    store_port: int
    zmq_ip: str | None = None
    zmq_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CheckpointEngine(abc.ABC):
    """Moves weights between a trainer and samplers that live in other processes.

    Lifecycle, driven by ``CheckpointEngineManager``: ``prepare`` -> ``build_topology`` (on the driver) ->
    ``init_process_group`` (trainer and samplers at the same time) -> ``send_weights`` / ``receive_weights`` ->
    ``finalize``.
    """

    is_master: bool = False

    def __init__(self, rank: int | None = None) -> None:
        self.rank = rank

    @abc.abstractmethod
    def prepare(self) -> Any:
        """Allocate buffers; on the master also open its channels and return their ``MasterMetadata`` (else None).
        Idempotent."""

    @classmethod
    def build_topology(
        cls, trainer_world_size: int, rollout_world_size: int, metadata: list[Any]
    ) -> tuple[dict[str, list], dict[str, list]]:
        """``(trainer_kwargs, rollout_kwargs)`` for ``init_process_group``, one list entry per worker.

        Trainer rank 0 is sync rank 0, the other trainer ranks -1 (not participating); rollout ``i`` is sync rank
        ``i + 1``; the group has ``rollout_world_size + 1`` members.
        """
        world = rollout_world_size + 1
        master = metadata[0]
        trainer = {
            "rank": [0] + [-1] * (trainer_world_size - 1),
            "world_size": [world] * trainer_world_size,
            "master_metadata": [master] * trainer_world_size,
        }
        rollout = {
            "rank": list(range(1, rollout_world_size + 1)),
            "world_size": [world] * rollout_world_size,
            "master_metadata": [master] * rollout_world_size,
        }
        return trainer, rollout

    @abc.abstractmethod
    def init_process_group(self, rank: int, world_size: int, master_metadata: Any) -> None:
        """Join the private sync group (a rank < 0 only records that it does not take part)."""

    @abc.abstractmethod
    async def send_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Consume ``(name, tensor)`` pairs; sync rank 0 transmits them, ranks < 0 only iterate."""

    @abc.abstractmethod
    def receive_weights(self) -> AsyncIterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)``; the tensors may be views into a reused buffer: copy what you keep."""

    @abc.abstractmethod
    def finalize(self) -> None:
        """After a sync: tear the group and buffers down when ``rebuild_group`` is set, else keep them."""
