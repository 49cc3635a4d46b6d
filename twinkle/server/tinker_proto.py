"""The protobuf messages of the Tinker SDK >= 0.38 that this server reads or writes, in plain Python.

The SDK (``tinker/proto/tinker_public.proto``, package ``tinker_public``) sends ``forward_backward`` as a
``ForwardBackwardRequest`` and wants ``ForwardBackwardOutput`` / ``SampleResponse`` back when it asks with
``Accept: application/x-protobuf``. Five messages is too little to carry a generated ``_pb2`` module, a
``protobuf`` runtime pin and a descriptor that would clash with the SDK's own in one process, so the wire format
(varints, length-delimited fields, little-endian fixed64) is written out here. Field numbers are the SDK's; tests
round-trip every message through the real SDK's classes.

Decoded requests come out in the SDK's JSON shape (``{"model_id", "forward_backward_input": {"data": [Datum],
...}}`` with ``TensorData`` dicts), so one handler serves both the 0.16 JSON and the 0.38 protobuf clients.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["ProtoError", "decode_forward_backward_request", "encode_forward_backward_output",
           "encode_sample_response"]

CONTENT_TYPE = "application/x-protobuf"

# enum DType
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<f4"), 2: np.dtype("<i8"), 3: np.dtype("<i4"), 4: np.dtype("<u2")}
_FLOAT32, _INT64 = 1, 2


class ProtoError(ValueError):
    """The body is not the protobuf message it claims to be (the route answers 400 with this message)."""


# ---------------------------------------------------------------------------- wire primitives

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): an int for varints, bytes for the rest."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ProtoError(f"unsupported wire type {wire} (field {number})")
        if pos > len(buf):
            raise ProtoError(f"field {number} runs past the end of the message")
        yield number, wire, value


def _signed(value: int) -> int:
    """An int32/int64 read as a varint: negative numbers arrive as 64-bit two's complement."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_ints(wire: int, value: Any) -> list[int]:
    if wire == 0:
        return [_signed(value)]
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(_signed(item))
    return out


def _str(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ProtoError(f"a string field is not UTF-8 ({exc})") from exc


def _key(number: int, wire: int) -> bytes:
    return _enc_varint(number << 3 | wire)


def _enc_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _len(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _enc_varint(len(payload)) + payload


def _uint(number: int, value: int) -> bytes:
    return _key(number, 0) + _enc_varint(value) if value else b""  # proto3: defaults are not written


def _double(number: int, value: float) -> bytes:
    return _key(number, 1) + struct.pack("<d", value)


def _map_entry(number: int, key: str, value: bytes) -> bytes:
    return _len(number, _len(1, key.encode()) + value)


# ---------------------------------------------------------------------------- requests

def _tensor(buf: bytes) -> dict[str, Any]:
    """``Tensor {dense | sparse_csr, dtype, shape}`` -> the JSON ``TensorData`` ``{data, dtype, shape}``."""
    dense = csr = None
    dtype, shape = 0, []
    for number, wire, value in _fields(buf):
        if number == 1:
            dense = value
        elif number == 2:
            csr = {n: v for n, _, v in _fields(value)}
        elif number == 3:
            dtype = value
        elif number == 4:
            shape.extend(_packed_ints(wire, value))
    np_dtype = _DTYPES.get(dtype)
    if np_dtype is None or dtype == 4:
        raise ProtoError(f"tensor dtype {dtype} is not accepted; send float32 or int64")
    if csr is not None:
        if len(shape) != 2:
            raise ProtoError(f"a sparse CSR tensor needs a 2-D shape, got {shape}")
        values = np.frombuffer(csr.get(1, b""), dtype=np_dtype)
        crow = np.frombuffer(csr.get(2, b""), dtype="<i8")
        col = np.frombuffer(csr.get(3, b""), dtype="<i8")
        if len(crow) != shape[0] + 1 or len(col) != len(values) or (len(col) and col.max() >= shape[1]):
            raise ProtoError("inconsistent sparse CSR tensor (crow_indices, col_indices, values, shape)")
        array = np.zeros(shape, dtype=np_dtype)
        for row in range(shape[0]):
            array[row, col[crow[row]:crow[row + 1]]] = values[crow[row]:crow[row + 1]]
        flat: np.ndarray[Any, Any] = array.reshape(-1)
    else:
        flat = np.frombuffer(dense or b"", dtype=np_dtype)
    if shape and int(np.prod(shape)) != flat.size:
        raise ProtoError(f"tensor shape {shape} does not match its {flat.size} values")
    return {"data": flat.tolist(), "dtype": "float32" if np_dtype.kind == "f" else "int64",
            "shape": shape or [flat.size]}


def _chunk(buf: bytes) -> dict[str, Any]:
    for number, _, value in _fields(buf):
        if number == 1:  # EncodedTextChunk {bytes tokens = 1}: int32 little-endian
            tokens = b"".join(v for n, _, v in _fields(value) if n == 1)
            if len(tokens) % 4:
                raise ProtoError("encoded_text.tokens is not a whole number of int32 values")
            return {"type": "encoded_text", "tokens": np.frombuffer(tokens, dtype="<i4").tolist()}
        if number in (2, 3):
            raise ProtoError("image and audio (dmel) chunks are not accepted: this server trains text models")
    raise ProtoError("an empty model input chunk")


def _datum(buf: bytes) -> dict[str, Any]:
    chunks, inputs = [], {}
    for number, _, value in _fields(buf):
        if number == 1:
            chunks.append(_chunk(value))
        elif number == 2:
            entry = {n: v for n, _, v in _fields(value)}
            inputs[_str(entry.get(1, b""))] = _tensor(entry.get(2, b""))
        # 3, 4: provenance spans (StableReinforce bookkeeping): not used by the losses offered here
    return {"model_input": {"chunks": chunks}, "loss_fn_inputs": inputs}


def decode_forward_backward_request(buf: bytes) -> dict[str, Any]:
    """``ForwardBackwardRequest`` -> the JSON body of ``/forward_backward`` plus ``forward_only``."""
    body: dict[str, Any] = {"model_id": "", "seq_id": 0, "forward_only": False}
    fb: dict[str, Any] = {"data": [], "loss_fn": "", "loss_fn_config": {}}
    config_v2: dict[str, Any] = {}
    for number, _, value in _fields(buf):
        if number == 1:
            body["model_id"] = _str(value)
        elif number == 2:
            body["seq_id"] = _signed(value)
        elif number == 3:
            fb["data"].append(_datum(value))
        elif number == 4:
            fb["loss_fn"] = _str(value)
        elif number == 5:
            entry = {n: v for n, _, v in _fields(value)}
            fb["loss_fn_config"][_str(entry.get(1, b""))] = struct.unpack("<d", entry.get(2, b"\0" * 8))[0]
        elif number == 6:
            body["forward_only"] = bool(value)
        elif number == 7:  # LossConfigValue {double number = 1; string text = 2}
            entry = {n: v for n, _, v in _fields(value)}
            inner = {n: v for n, _, v in _fields(entry.get(2, b""))}
            key = _str(entry.get(1, b""))
            config_v2[key] = struct.unpack("<d", inner[1])[0] if 1 in inner else _str(inner.get(2, b""))
    fb["loss_fn_config"].update(config_v2)  # the SDK dual-writes numbers; v2 also carries strings
    body["forward_backward_input"] = fb
    return body


# ---------------------------------------------------------------------------- responses

def _batched(arrays: list[np.ndarray], dtype: int) -> bytes:
    """``BatchedTensor``: the per-datum 1-D arrays back to back, with their byte offsets."""
    data = b"".join(a.tobytes() for a in arrays)
    offsets = np.cumsum([0] + [a.nbytes for a in arrays], dtype="<i8").astype("<i8")
    return _len(1, data) + _len(2, offsets.tobytes()) + _uint(3, dtype)


def encode_forward_backward_output(result: dict[str, Any]) -> bytes:
    """Our ``forward_backward`` result (JSON shape, ``TensorData`` dicts) -> ``ForwardBackwardOutput``."""
    outputs = result.get("loss_fn_outputs") or []
    record = _len(1, b"ArrayRecord") + _uint(3, len(outputs))
    names = list(outputs[0]) if outputs else []
    for name in names:
        tensors = [o[name] for o in outputs]
        is_float = all(t.get("dtype", "float32") == "float32" for t in tensors)
        dtype = np.dtype("<f4") if is_float else np.dtype("<i8")
        arrays = [np.asarray(t["data"], dtype=dtype).reshape(-1) for t in tensors]
        record += _map_entry(2, name, _len(2, _batched(arrays, _FLOAT32 if is_float else _INT64)))
    out = _len(1, str(result.get("loss_fn_output_type", "")).encode())
    if outputs:
        out += _len(2, record)
    for key, value in (result.get("metrics") or {}).items():
        out += _map_entry(3, str(key), _double(2, float(value)))
    return out


def encode_sample_response(result: dict[str, Any]) -> bytes:
    """Our ``asample`` result ``{sequences: [{stop_reason, tokens, logprobs}]}`` -> ``SampleResponse``."""
    out = b""
    for seq in result.get("sequences") or []:
        msg = _uint(1, 1 if seq.get("stop_reason") == "length" else 0)  # STOP_REASON_STOP = 0, LENGTH = 1
        msg += _len(2, np.asarray(seq.get("tokens") or [], dtype="<i4").tobytes())
        if seq.get("logprobs") is not None:
            msg += _len(3, np.asarray(seq["logprobs"], dtype="<f4").tobytes())
        out += _len(1, msg)
    return out
