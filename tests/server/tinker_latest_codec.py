"""The real tinker 0.38 SDK's protobuf codecs, for ``test_tinker_latest.py`` to check ``twinkle.server.tinker_proto``.

``python tinker_latest_codec.py request``: prints, as JSON, a ``ForwardBackwardRequest`` the SDK encodes (hex)
with awkward contents (several chunks, a sparse CSR tensor, an int64 tensor, string and number config values).
``python tinker_latest_codec.py response KIND`` reads hex protobuf on stdin (KIND ``fb`` or ``sample``), decodes
it with the SDK, prints the result as JSON.
"""

from __future__ import annotations

import json
import sys

from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import deserialize_proto_response


def request() -> None:
    chunks = [types.EncodedTextChunk(tokens=[5, 6, 7]), types.EncodedTextChunk(tokens=[2**31 - 1, 0])]
    datum = types.Datum(
        model_input=types.ModelInput(chunks=chunks),
        loss_fn_inputs={
            "target_tokens": types.TensorData(data=[6, 7, 8, 9, 10], dtype="int64", shape=[5]),
            "weights": types.TensorData(data=[0.0, 0.5, 1.0, 1.0, 0.25], dtype="float32", shape=[5]),
            "mask": types.TensorData(data=[1.5, -2.0], dtype="float32", shape=[2, 3],
                                     sparse_crow_indices=[0, 1, 2], sparse_col_indices=[2, 0]),
        },
    )
    fb = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=[datum, datum], loss_fn="importance_sampling",
                                                          loss_fn_config={"epsilon": 0.2, "mode": "x"}),
        model_id="run-1", seq_id=7)
    msg = forward_backward_request_to_proto(fb)
    msg.forward_only = True
    print(json.dumps({"hex": msg.SerializeToString().hex()}))


def response(kind: str) -> None:
    raw = bytes.fromhex(sys.stdin.read().strip())
    if kind == "fb":
        out = deserialize_proto_response(raw, types.ForwardBackwardOutput)
        print(json.dumps({"loss_fn_output_type": out.loss_fn_output_type, "metrics": out.metrics,
                          "loss_fn_outputs": [{k: {"data": v.tolist(), "dtype": v.dtype, "shape": v.shape}
                                               for k, v in o.items()} for o in out.loss_fn_outputs]}))
    else:
        out = deserialize_proto_response(raw, types.SampleResponse)
        print(json.dumps({"sequences": [{"stop_reason": s.stop_reason, "tokens": list(s.tokens),
                                         "logprobs": None if s.logprobs is None else list(s.logprobs)}
                                        for s in out.sequences]}))


if __name__ == "__main__":
    request() if sys.argv[1] == "request" else response(sys.argv[2])
