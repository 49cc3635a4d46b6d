"""``NCCLCheckpointEngine``: the checkpoint engine between GPUs (CUDA, two GPUs or more). [never run here]

Written against the contract (gpu.md §2.4) and never executed: this project's machines have no GPU. Trainer rank 0
publishes each bucket's metadata on a ZMQ PUB socket (topic ``bucket_metadata``) and broadcasts the whole bucket
over an unregistered ``ProcessGroupNCCL`` built on a ``TCPStore``; two CUDA buffers alternate so that packing the
next bucket overlaps the broadcast of the previous one. A tensor larger than a bucket is refused.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import Any

import torch

from twinkle.checkpoint_engine._bucket import BucketReader, pack_buckets
from twinkle.checkpoint_engine._util import free_port, node_ip
from twinkle.checkpoint_engine.base import CheckpointEngine, MasterMetadata
from twinkle.utils.requires import require_cuda, requires

__all__ = ["NCCLCheckpointEngine"]

TOPIC = b"bucket_metadata"


class NCCLCheckpointEngine(CheckpointEngine):
    """Weight sync between GPUs over NCCL (needs CUDA and ``pyzmq``).

    Args:
        bucket_size: bytes per bucket (default 3 GiB).
        group_name: the prefix of the store keys.
        rebuild_group: ``finalize`` drops the socket, group and buffers.
        rollout_dtype: the dtype receivers expect (kept for the contract; tensors travel in their own dtype).

    Raises:
        MissingDependencyError: no CUDA device, or no ``pyzmq``.
    """

    def __init__(self, bucket_size: int = 3072 << 20, group_name: str = "twinkle_ckpt", rebuild_group: bool = False,
                 rollout_dtype: torch.dtype = torch.bfloat16, rank: int | None = None) -> None:
        require_cuda("NCCLCheckpointEngine", extra="vllm")
        self._zmq = requires("zmq", extra="vllm", what="NCCLCheckpointEngine", package="pyzmq")
        super().__init__(rank)
        self.bucket_size = int(bucket_size)
        self.group_name = group_name
        self.rebuild_group = rebuild_group
        self.rollout_dtype = rollout_dtype
        self._buffers: list[torch.Tensor] = []
        self._metadata: MasterMetadata | None = None
        self._socket: Any = None
        self._group: Any = None

    def prepare(self) -> dict[str, Any] | None:
        if not self._buffers:
            device = torch.device("cuda", torch.cuda.current_device())
            self._buffers = [torch.empty(self.bucket_size, dtype=torch.uint8, device=device) for _ in range(2)]
        if not self.is_master:
            return None
        if self._metadata is None:
            ip = node_ip()
            context = self._zmq.Context.instance()
            self._socket = context.socket(self._zmq.PUB)
            zmq_port = self._socket.bind_to_random_port(f"tcp://{ip}")
            self._metadata = MasterMetadata(store_host=ip, store_port=free_port(), zmq_ip=ip, zmq_port=zmq_port)
        return self._metadata.to_dict()

    def init_process_group(self, rank: int, world_size: int, master_metadata: Any) -> None:
        import torch.distributed as dist

        if self._group is not None:
            return
        self.rank, self.world_size = rank, world_size
        if rank < 0:
            return
        meta = master_metadata if isinstance(master_metadata, dict) else master_metadata.to_dict()
        store = dist.TCPStore(meta["store_host"], int(meta["store_port"]), world_size, is_master=rank == 0,
                              timeout=timedelta(seconds=600), wait_for_workers=True)
        self._group = dist.ProcessGroupNCCL(dist.PrefixStore(self.group_name, store), rank, world_size,
                                            dist.ProcessGroupNCCL.Options())
        if rank > 0:
            self._socket = self._zmq.Context.instance().socket(self._zmq.SUB)
            self._socket.connect(f"tcp://{meta['zmq_ip']}:{meta['zmq_port']}")
            self._socket.setsockopt(self._zmq.SUBSCRIBE, TOPIC)
        self._broadcast(torch.zeros(1, dtype=torch.uint8, device="cuda"))  # barrier

    def _broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self._group.broadcast([tensor], opts).wait()

    async def send_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.rank is None or self.rank < 0:
            for _ in weights:
                pass
            return
        loop = asyncio.get_running_loop()
        previous = None
        for i, bucket in enumerate(pack_buckets(weights, self.bucket_size, to_cpu=False, chunk=False)):
            buffer = self._buffers[i % 2]
            if previous is not None:
                await previous  # the other buffer's broadcast must end before it is refilled
            bucket.write_into(buffer)
            meta = {"bucket_meta": {m["name"]: m for m in bucket.metas}, "is_last": bucket.is_last}
            self._socket.send_multipart([TOPIC, pickle.dumps(meta)])
            previous = loop.run_in_executor(None, self._broadcast, buffer)
        if previous is not None:
            await previous

    async def receive_weights(self) -> AsyncIterator[tuple[str, torch.Tensor]]:
        reader = BucketReader()
        i = 0
        while True:
            _, payload = self._socket.recv_multipart()
            meta = pickle.loads(payload)
            buffer = self._buffers[i % 2]
            self._broadcast(buffer)
            for item in reader.read(list(meta["bucket_meta"].values()), buffer):
                yield item
            i += 1
            if meta["is_last"]:
                break

    def finalize(self) -> None:
        if not self.rebuild_group:
            return
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket, self._group, self._buffers, self._metadata = None, None, [], None
