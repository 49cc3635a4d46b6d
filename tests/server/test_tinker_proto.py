"""``twinkle.server.tinker_proto``: the 0.38 SDK's protobuf messages, decoded into the JSON shape the routes take.

The round trips against the real SDK are in ``test_tinker_latest.py`` (slow: a venv of its own); these pin the
refusals and the private descriptor pool with the vendored schema alone.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from twinkle.server.tinker_proto import (
    MAX_SPARSE_DENSE_VALUES,
    ForwardBackwardRequest,
    ProtoError,
    decode_forward_backward_request,
)


def request_with_tensor(**tensor) -> bytes:
    msg = ForwardBackwardRequest(model_id="m", loss_fn="cross_entropy")
    datum = msg.data.add()
    datum.model_input.add().encoded_text.tokens = (1).to_bytes(4, "little")
    tensor_class = type(datum.loss_fn_inputs["weights"])
    datum.loss_fn_inputs["weights"].CopyFrom(tensor_class(**tensor))
    return msg.SerializeToString()


def csr(values: list[float], crow: list[int], col: list[int]) -> dict:
    import numpy as np

    return {"values": np.asarray(values, "<f4").tobytes(), "crow_indices": np.asarray(crow, "<i8").tobytes(),
            "col_indices": np.asarray(col, "<i8").tobytes()}


def test_a_sparse_tensor_arrives_dense():
    body = decode_forward_backward_request(request_with_tensor(dtype=1, shape=[2, 3],
                                                               sparse_csr=csr([1.5, -2.0], [0, 1, 2], [2, 0])))
    weights = body["forward_backward_input"]["data"][0]["loss_fn_inputs"]["weights"]
    assert weights == {"data": [0.0, 0.0, 1.5, -2.0, 0.0, 0.0], "dtype": "float32", "shape": [2, 3]}


def test_a_tiny_sparse_tensor_claiming_a_huge_shape_is_refused_before_it_is_made_dense():
    huge = request_with_tensor(dtype=1, shape=[1, 2**40], sparse_csr=csr([], [0, 0], []))
    assert len(huge) < 100
    with pytest.raises(ProtoError, match=f"larger than {MAX_SPARSE_DENSE_VALUES} values"):
        decode_forward_backward_request(huge)


@pytest.mark.parametrize("crow, col", [([0, 2, 1], [0, 1]),   # rows going backwards
                                       ([1, 1, 2], [0, 1]),   # not starting at 0
                                       ([0, 1, 2], [0, 3]),   # a column past the shape
                                       ([0, 1, 2], [0, -1])])  # a negative column
def test_an_inconsistent_sparse_tensor_is_refused(crow, col):
    with pytest.raises(ProtoError, match="inconsistent sparse CSR"):
        decode_forward_backward_request(request_with_tensor(dtype=1, shape=[2, 3],
                                                            sparse_csr=csr([1.0, 2.0], crow, col)))


@pytest.mark.parametrize("tensor, rule", [({"dtype": 4, "dense": b"\0\0"}, "dtype 4 is not accepted"),
                                          ({"dtype": 1, "dense": b"\0" * 6}, "not a whole number of 4-byte"),
                                          ({"dtype": 1, "dense": b"\0" * 8, "shape": [3]}, "does not match")])
def test_a_bad_dense_tensor_is_refused_naming_the_rule(tensor, rule):
    with pytest.raises(ProtoError, match=rule):
        decode_forward_backward_request(request_with_tensor(**tensor))


def test_bytes_that_are_not_a_message_are_refused():
    with pytest.raises(ProtoError, match=r"not a tinker_public\.ForwardBackwardRequest"):
        decode_forward_backward_request(b"\x0a\xff\xff\xff")  # field 1, a length running past the end


SDK_LIKE_PB2 = textwrap.dedent("""
    # what the SDK's generated tinker_public_pb2 does: its schema into the DEFAULT pool, under the same file name
    # and full names as ours. A newer SDK's schema differs (here: one more field), which the default pool refuses
    # next to another copy of that file.
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.internal import builder
    from twinkle.server._tinker_public_descriptor import TINKER_PUBLIC_PROTO

    newer = descriptor_pb2.FileDescriptorProto.FromString(TINKER_PUBLIC_PROTO)
    request = next(m for m in newer.message_type if m.name == "ForwardBackwardRequest")
    request.field.add(name="added_in_a_later_sdk", number=99, type=9, label=1)
    sdk = {}
    builder.BuildMessageAndEnumDescriptors(descriptor_pool.Default().AddSerializedFile(newer.SerializeToString()), sdk)
    builder.BuildTopDescriptorsAndMessages(descriptor_pool.Default().FindFileByName("tinker_public.proto"),
                                           "sdk_tinker_public_pb2", sdk)
""")


@pytest.mark.parametrize("sdk_first", [True, False], ids=["sdk-imported-first", "ours-imported-first"])
def test_the_sdk_schema_in_the_default_pool_does_not_clash_with_ours(sdk_first):
    ours = "from twinkle.server import tinker_proto\n"
    check = textwrap.dedent("""
        wire = sdk["ForwardBackwardRequest"](model_id="run-1", seq_id=3, added_in_a_later_sdk="x").SerializeToString()
        body = tinker_proto.decode_forward_backward_request(wire)
        assert (body["model_id"], body["seq_id"]) == ("run-1", 3), body
        print("both schemas in one process")
    """)
    code = (SDK_LIKE_PB2 + ours if sdk_first else ours + SDK_LIKE_PB2) + check
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "both schemas in one process" in proc.stdout
