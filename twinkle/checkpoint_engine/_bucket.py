"""Packing named tensors into fixed-size byte buckets, and unpacking them (pure tensor code, no communication).

Tensors are laid back to back at ``ALIGN``-byte offsets (so a slice of the bucket can be viewed as any dtype);
one larger than a bucket is cut into chunks that fill buckets in turn and are put together again on the receiver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from twinkle.checkpoint_engine.base import TensorMeta

__all__ = ["ALIGN", "Bucket", "BucketReader", "pack_buckets"]

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def as_bytes(tensor: torch.Tensor, to_cpu: bool = True) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (contiguous; on the CPU unless ``to_cpu=False``; its dtype is kept
    in the meta, never converted)."""
    t = tensor.detach()
    if to_cpu and t.device.type != "cpu":
        t = t.to("cpu")
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8)


@dataclass
class Bucket:
    """One bucket: where each tensor lies (``metas``, in order), the bytes to copy in, and how many bytes it uses."""

    metas: list[TensorMeta] = field(default_factory=list)
    parts: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    used: int = 0
    is_last: bool = False

    def write_into(self, buffer: torch.Tensor) -> torch.Tensor:
        """Copy the parts into ``buffer`` and return the used prefix."""
        for offset, data in self.parts:
            buffer[offset:offset + data.numel()].copy_(data)
        return buffer[: self.used]


def pack_buckets(
    weights: Iterable[tuple[str, torch.Tensor]], bucket_size: int, to_cpu: bool = True, chunk: bool = True
) -> Iterator[Bucket]:
    """Group ``(name, tensor)`` pairs into buckets of at most ``bucket_size`` bytes; the last has ``is_last``.

    Every input yields at least one bucket (an empty final one when there are no weights), so a receiver always
    learns that the stream ended. ``chunk=False`` refuses a tensor larger than a bucket (the NCCL engine's rule).
    """
    if bucket_size < ALIGN:
        raise ValueError(f"bucket_size must be at least {ALIGN} bytes, got {bucket_size}")
    current = Bucket()
    for name, tensor in weights:
        data = as_bytes(tensor, to_cpu)
        total = data.numel()
        if total > bucket_size and not chunk:
            raise ValueError(
                f"{name} has {total} bytes, more than the bucket of {bucket_size}; raise the bucket size"
            )
        base: TensorMeta = {"name": name, "shape": tuple(tensor.shape), "dtype": tensor.dtype}
        if total <= bucket_size:
            offset = _align(current.used)
            if offset + total > bucket_size:
                yield current
                current, offset = Bucket(), 0
            current.metas.append({**base, "offset": offset, "nbytes": total})
            current.parts.append((offset, data))
            current.used = offset + total
            continue
        position = 0
        while position < total:
            offset = _align(current.used)
            room = bucket_size - offset
            if room <= 0:
                yield current
                current = Bucket()
                continue
            n = min(room, total - position)
            current.metas.append(
                {**base, "offset": offset, "nbytes": n, "chunk_offset": position, "total_nbytes": total}
            )
            current.parts.append((offset, data[position:position + n]))
            current.used = offset + n
            position += n
            if position < total:
                yield current
                current = Bucket()
    current.is_last = True
    yield current


class BucketReader:
    """Turns received buckets back into ``(name, tensor)`` pairs; chunked tensors come out when complete."""

    def __init__(self) -> None:
        self._pending: dict[str, torch.Tensor] = {}

    def read(self, metas: list[TensorMeta], buffer: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the tensors of one bucket held in ``buffer``: views into it (copy them), or assembled chunks."""
        for meta in metas:
            offset, nbytes = meta["offset"], meta["nbytes"]
            raw = buffer[offset:offset + nbytes]
            if "total_nbytes" not in meta:
                yield meta["name"], raw.view(meta["dtype"]).view(meta["shape"])
                continue
            name, total = meta["name"], meta["total_nbytes"]
            whole = self._pending.get(name)
            if whole is None:
                whole = self._pending[name] = torch.empty(total, dtype=torch.uint8)
            start = meta["chunk_offset"]
            whole[start:start + nbytes].copy_(raw)
            if start + nbytes == total:
                del self._pending[name]
                yield name, whole.view(meta["dtype"]).view(meta["shape"])

    def check_done(self) -> None:
        if self._pending:
            raise RuntimeError(f"the weight stream ended with incomplete chunked tensors: {sorted(self._pending)[:3]}")
