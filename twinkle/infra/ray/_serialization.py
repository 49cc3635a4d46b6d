"""How torch tensors travel between the driver and the actors.

Ray pickles a ``torch.Tensor`` through torch's own reduction, which writes the storage with ``torch.save``'s legacy
format and reads it back with ``torch.load``: about a tenth of a millisecond per tensor each way, paid for every
``loss`` and ``logps`` a training step returns. A CPU tensor is sent as a NumPy array instead (Ray moves those
without pickling their bytes) and rebuilt with ``torch.from_numpy``. Everything else (CUDA tensors, tensors that
require grad, sparse or quantized ones, dtypes NumPy lacks) keeps torch's reduction.

Registered in the driver by ``init_ray`` and in every actor when it starts; the receiving side needs nothing (the
rebuild function travels by reference).

One difference from torch's pickling: two tensors sent in one object that share storage (tied weights in a
``state_dict``) arrive as two tensors with equal values, not as views of one storage. A slice of a large tensor
sends only the slice (torch's reduction sends the whole storage).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

__all__ = ["register_tensor_serializer"]

_registered = False


def _numpy_dtypes() -> set[Any]:
    import torch

    return {torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
            torch.uint8, torch.bool, torch.complex64, torch.complex128}


_FAST_DTYPES: set[Any] | None = None


def _serialize(tensor: Any) -> tuple[str, Any]:
    import torch

    global _FAST_DTYPES
    if _FAST_DTYPES is None:
        _FAST_DTYPES = _numpy_dtypes()
    if (tensor.device.type == "cpu" and not tensor.requires_grad and tensor.layout is torch.strided
            and tensor.dtype in _FAST_DTYPES and not tensor.is_conj() and not tensor.is_neg()):
        return "numpy", tensor.detach().contiguous().numpy()
    # pickle.dumps, not Ray's pickler: this tensor takes torch's own reduction, not this function again
    return "torch", pickle.dumps(tensor, protocol=5)


def _deserialize(payload: tuple[str, Any]) -> Any:
    kind, data = payload
    if kind == "numpy":
        import torch

        if not data.flags.writeable:
            # a zero-copy view of Ray's buffer: the tensor must own memory it may write to
            data = np.array(data, copy=True)
        return torch.from_numpy(data)
    return pickle.loads(data)


def register_tensor_serializer() -> None:
    """Send CPU tensors through Ray as NumPy arrays (in this process; idempotent)."""
    global _registered
    if _registered:
        return
    import ray
    import torch

    ray.util.register_serializer(torch.Tensor, serializer=_serialize, deserializer=_deserialize)
    _registered = True
