"""The protobuf messages of the Tinker SDK >= 0.38 that this server reads or writes, through the ``protobuf`` library.

The SDK (``tinker/proto/tinker_public.proto``, package ``tinker_public``) sends ``forward_backward`` as a
``ForwardBackwardRequest`` and wants ``ForwardBackwardOutput`` / ``SampleResponse`` back when it asks with
``Accept: application/x-protobuf``. The schema is the SDK's own, vendored as a serialized descriptor
(``_tinker_public_descriptor.py``); the message classes are built in a private ``DescriptorPool``, not the default
one, so a process that also imports the SDK's ``tinker_public_pb2`` (same file name, same full names) does not clash.
Tests round-trip every message through the real SDK.

Decoded requests come out in the SDK's JSON shape (``{"model_id", "forward_backward_input": {"data": [Datum],
...}}`` with ``TensorData`` dicts), so one handler serves both the 0.16 JSON and the 0.38 protobuf clients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from twinkle.server._tinker_public_descriptor import TINKER_PUBLIC_PROTO

__all__ = ["CONTENT_TYPE", "ProtoError", "decode_forward_backward_request", "encode_forward_backward_output",
           "encode_sample_response"]

CONTENT_TYPE = "application/x-protobuf"

_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(TINKER_PUBLIC_PROTO)


def _message(name: str) -> type[Message]:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"tinker_public.{name}"))


ForwardBackwardRequest = _message("ForwardBackwardRequest")
ForwardBackwardOutput = _message("ForwardBackwardOutput")
SampleResponse = _message("SampleResponse")

# enum DType: float32 and int64 are what the losses take; int32 arrives too (bfloat16 is refused)
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<f4"), 2: np.dtype("<i8"), 3: np.dtype("<i4")}
_FLOAT32, _INT64 = 1, 2
_STOP_REASON_STOP, _STOP_REASON_LENGTH = 0, 1
# the most values a sparse CSR loss input may have once made dense (a [sequence, vocabulary] slice fits)
MAX_SPARSE_DENSE_VALUES = 1 << 24


class ProtoError(ValueError):
    """The body is not the protobuf message it claims to be (the route answers 400 with this message)."""


# ---------------------------------------------------------------------------- requests

def _tensor(msg: Any) -> dict[str, Any]:
    """``Tensor {dense | sparse_csr, dtype, shape}`` -> the JSON ``TensorData`` ``{data, dtype, shape}``."""
    np_dtype = _DTYPES.get(msg.dtype)
    if np_dtype is None:
        raise ProtoError(f"tensor dtype {msg.dtype} is not accepted; send float32 or int64")
    shape = list(msg.shape)
    if msg.WhichOneof("encoding") == "sparse_csr":
        csr = msg.sparse_csr
        if len(shape) != 2 or min(shape) < 0:
            raise ProtoError(f"a sparse CSR tensor needs a 2-D shape, got {shape}")
        values = _frombuffer(csr.values, np_dtype, "sparse_csr.values")
        crow = _frombuffer(csr.crow_indices, np.dtype("<i8"), "sparse_csr.crow_indices")
        col = _frombuffer(csr.col_indices, np.dtype("<i8"), "sparse_csr.col_indices")
        if shape[0] * shape[1] > MAX_SPARSE_DENSE_VALUES:
            # it is made dense here: a tiny body claiming a huge shape must not allocate terabytes
            raise ProtoError(f"a sparse CSR tensor of shape {shape} is larger than {MAX_SPARSE_DENSE_VALUES} "
                             f"values once dense; send smaller tensors")
        bad_rows = len(crow) != shape[0] + 1 or crow[0] != 0 or crow[-1] != len(col) or np.any(np.diff(crow) < 0)
        bad_cols = len(col) != len(values) or (len(col) and (col.min() < 0 or col.max() >= shape[1]))
        if bad_rows or bad_cols:
            raise ProtoError("inconsistent sparse CSR tensor (crow_indices, col_indices, values, shape)")
        array = np.zeros(shape, dtype=np_dtype)
        array[np.repeat(np.arange(shape[0]), np.diff(crow)), col] = values
        flat: np.ndarray[Any, Any] = array.reshape(-1)
    else:
        flat = _frombuffer(msg.dense, np_dtype, "dense")
    if shape and int(np.prod(shape)) != flat.size:
        raise ProtoError(f"tensor shape {shape} does not match its {flat.size} values")
    return {"data": flat.tolist(), "dtype": "float32" if np_dtype.kind == "f" else "int64",
            "shape": shape or [flat.size]}


def _frombuffer(raw: bytes, dtype: np.dtype[Any], what: str) -> np.ndarray[Any, Any]:
    if len(raw) % dtype.itemsize:
        raise ProtoError(f"{what} is not a whole number of {dtype.itemsize}-byte values")
    return np.frombuffer(raw, dtype=dtype)


def _chunk(msg: Any) -> dict[str, Any]:
    kind = msg.WhichOneof("chunk")
    if kind == "encoded_text":  # EncodedTextChunk {bytes tokens}: int32 little-endian
        tokens = _frombuffer(msg.encoded_text.tokens, np.dtype("<i4"), "encoded_text.tokens")
        return {"type": "encoded_text", "tokens": tokens.tolist()}
    if kind is None:
        raise ProtoError("an empty model input chunk")
    raise ProtoError("image and audio (dmel) chunks are not accepted: this server trains text models")


def _datum(msg: Any) -> dict[str, Any]:
    # model_input_spans / loss_fn_input_spans (provenance bookkeeping) are not used by the losses offered here
    return {"model_input": {"chunks": [_chunk(c) for c in msg.model_input]},
            "loss_fn_inputs": {name: _tensor(t) for name, t in msg.loss_fn_inputs.items()}}


def decode_forward_backward_request(buf: bytes) -> dict[str, Any]:
    """``ForwardBackwardRequest`` -> the JSON body of ``/forward_backward`` plus ``forward_only``."""
    try:
        msg: Any = ForwardBackwardRequest.FromString(buf)
    except DecodeError as exc:
        raise ProtoError(f"not a tinker_public.ForwardBackwardRequest ({exc})") from exc
    config: dict[str, Any] = dict(msg.loss_fn_config)
    # the SDK dual-writes numbers into both maps; v2 also carries strings (LossConfigValue {number | text})
    for key, value in msg.loss_fn_config_v2.items():
        config[key] = value.number if value.WhichOneof("value") == "number" else value.text
    return {"model_id": msg.model_id, "seq_id": msg.seq_id, "forward_only": msg.forward_only,
            "forward_backward_input": {"data": [_datum(d) for d in msg.data], "loss_fn": msg.loss_fn,
                                       "loss_fn_config": config}}


# ---------------------------------------------------------------------------- responses

def encode_forward_backward_output(result: dict[str, Any]) -> bytes:
    """Our ``forward_backward`` result (JSON shape, ``TensorData`` dicts) -> ``ForwardBackwardOutput``.

    The per-datum outputs go as one ``ArrayRecord``: each field a ``BatchedTensor`` holding the datums' 1-D arrays
    back to back with their byte offsets.
    """
    out: Any = ForwardBackwardOutput(loss_fn_output_type=str(result.get("loss_fn_output_type", "")))
    outputs = result.get("loss_fn_outputs") or []
    if outputs:
        record = out.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=len(outputs))
        for name in outputs[0]:
            tensors = [o[name] for o in outputs]
            is_float = all(t.get("dtype", "float32") == "float32" for t in tensors)
            dtype = np.dtype("<f4") if is_float else np.dtype("<i8")
            arrays = [np.asarray(t["data"], dtype=dtype).reshape(-1) for t in tensors]
            batched = record.fields[str(name)]
            batched.data = b"".join(a.tobytes() for a in arrays)
            batched.offsets = np.cumsum([0] + [a.nbytes for a in arrays]).astype("<i8").tobytes()
            batched.dtype = _FLOAT32 if is_float else _INT64
    for key, value in (result.get("metrics") or {}).items():
        out.metrics[str(key)] = float(value)
    return bytes(out.SerializeToString())


def encode_sample_response(result: dict[str, Any]) -> bytes:
    """Our ``asample`` result ``{sequences: [{stop_reason, tokens, logprobs}]}`` -> ``SampleResponse``."""
    out: Any = SampleResponse()
    for seq in result.get("sequences") or []:
        msg = out.sequences.add(
            stop_reason=_STOP_REASON_LENGTH if seq.get("stop_reason") == "length" else _STOP_REASON_STOP,
            tokens=np.asarray(seq.get("tokens") or [], dtype="<i4").tobytes())
        if seq.get("logprobs") is not None:
            msg.logprobs = np.asarray(seq["logprobs"], dtype="<f4").tobytes()
    return bytes(out.SerializeToString())
