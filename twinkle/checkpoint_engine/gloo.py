"""``GlooCheckpointEngine``: the checkpoint engine for CPU processes (Ray actors on CPU groups, tests, CI).

The same topology as NCCL (trainer rank 0 transmits, rollouts are ranks 1..N). A ``TCPStore`` hosted by sync
rank 0 and an unregistered ``ProcessGroupGloo`` form the private group, so the default group of either side is
untouched. Per bucket, three broadcasts from rank 0: a header ``[meta_bytes, used_bytes, is_last]`` (int64), the
pickled metadata (uint8), and the used part of the bucket. One buffer, no double buffering: on the CPU the
broadcast is the cost either way.
"""

from __future__ import annotations

import atexit
import os
import pickle
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from twinkle.checkpoint_engine._bucket import BucketReader, pack_buckets
from twinkle.checkpoint_engine._util import free_port, node_ip
from twinkle.checkpoint_engine.base import CheckpointEngine, MasterMetadata
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.checkpoint_engine")

__all__ = ["GlooCheckpointEngine"]

DEFAULT_BUCKET_BYTES = 256 << 20


def _timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("TWINKLE_CKPT_TIMEOUT_S", "600")))


class GlooCheckpointEngine(CheckpointEngine):
    """Weight sync between CPU processes over gloo.

    Args:
        bucket_size: bytes per bucket (default 256 MiB; ``TWINKLE_CKPT_BUCKET_BYTES`` overrides it when the
            mixin creates the engine). Larger tensors are sent in chunks.
        group_name: the prefix of the store keys.
        rebuild_group: ``finalize`` drops the group and buffer (the next sync builds new ones).
    """

    def __init__(self, bucket_size: int = DEFAULT_BUCKET_BYTES, group_name: str = "twinkle_ckpt",
                 rebuild_group: bool = False, rank: int | None = None) -> None:
        super().__init__(rank)
        self.bucket_size = int(bucket_size)
        self.group_name = group_name
        self.rebuild_group = rebuild_group
        self.world_size: int | None = None
        self._buffer: torch.Tensor | None = None
        self._metadata: MasterMetadata | None = None
        self._store: Any = None
        self._group: Any = None
        self._generation = 0

    # ---------------------------------------------------------------- set-up

    def prepare(self) -> dict[str, Any] | None:
        if self._buffer is None:
            self._buffer = torch.empty(self.bucket_size, dtype=torch.uint8)
        if not self.is_master:
            return None
        if self._metadata is None:
            self._metadata = MasterMetadata(store_host=node_ip(), store_port=free_port())
        return self._metadata.to_dict()

    def init_process_group(self, rank: int, world_size: int, master_metadata: Any) -> None:
        if self._group is not None or (self.rank is not None and self.rank < 0 and rank < 0):
            return  # kept from an earlier sync (rebuild_group=False)
        self.rank, self.world_size = rank, world_size
        if rank < 0:
            return
        meta = master_metadata if isinstance(master_metadata, dict) else master_metadata.to_dict()
        self._store = dist.TCPStore(
            meta["store_host"], int(meta["store_port"]), world_size, is_master=rank == 0, timeout=_timeout(),
            wait_for_workers=True,
        )
        prefixed = dist.PrefixStore(f"{self.group_name}/{self._generation}", self._store)
        self._group = dist.ProcessGroupGloo(prefixed, rank, world_size, _timeout())
        atexit.register(self.close)  # release the group before the store at exit, not in interpreter teardown
        self._broadcast(torch.zeros(1, dtype=torch.int64))  # a barrier: every member is in
        logger.debug("gloo checkpoint group ready: rank %d of %d", rank, world_size)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        opts.rootTensor = 0
        self._group.broadcast([tensor], opts).wait()

    # ---------------------------------------------------------------- transfer

    async def send_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.rank is None or self.rank < 0:
            for _ in weights:  # the generator may hold collectives of the trainer group: every rank runs it
                pass
            return
        if self.rank != 0:
            raise RuntimeError(f"only sync rank 0 sends weights; this engine is rank {self.rank}")
        assert self._buffer is not None and self._group is not None, "call prepare() and init_process_group() first"
        sent = 0
        for bucket in pack_buckets(weights, self.bucket_size):
            meta = torch.frombuffer(bytearray(pickle.dumps(bucket.metas)), dtype=torch.uint8)
            self._broadcast(torch.tensor([meta.numel(), bucket.used, int(bucket.is_last)], dtype=torch.int64))
            self._broadcast(meta)
            if bucket.used:
                self._broadcast(bucket.write_into(self._buffer))
            sent += bucket.used
        logger.debug("sent %d bytes of weights", sent)

    async def receive_weights(self) -> AsyncIterator[tuple[str, torch.Tensor]]:
        if self.rank is None or self.rank <= 0:
            raise RuntimeError(f"receive_weights runs on a rollout (sync rank >= 1), not on rank {self.rank}")
        assert self._buffer is not None and self._group is not None, "call prepare() and init_process_group() first"
        reader = BucketReader()
        while True:
            header = torch.zeros(3, dtype=torch.int64)
            self._broadcast(header)
            meta_bytes, used, is_last = (int(x) for x in header.tolist())
            meta = torch.empty(meta_bytes, dtype=torch.uint8)
            self._broadcast(meta)
            metas = pickle.loads(meta.numpy().tobytes())
            if used:
                self._broadcast(self._buffer[:used])
            for item in reader.read(metas, self._buffer):
                yield item
            if is_last:
                break
        reader.check_done()

    def finalize(self) -> None:
        if self.rebuild_group:
            self.close()

    def close(self) -> None:
        """Drop the group, then the store, and the buffer (the next sync builds new ones)."""
        if self._group is not None:
            self._group = None
        self._store, self._buffer, self._metadata = None, None, None
        self.rank, self._generation = None, self._generation + 1
