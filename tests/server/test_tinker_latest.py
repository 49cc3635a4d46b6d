"""The newest stock Tinker SDK (0.38, protobuf forward_backward) against twinkle-server, with only base_url and a key.

The shared venv pins 0.16.1 (upstream's ``init_tinker_client``), so 0.38 lives in a venv of its own, made from
PyPI on first use and cached (``$TWINKLE_TINKER_LATEST_VENV``, default ``~/.cache/twinkle-tests/tinker-0.38.0``);
``tinker_latest_flows.py`` runs there as a child process against a server in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from server_helpers import free_port, serve_in_thread

TINKER_LATEST = "0.38.0"
HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


def latest_sdk_python() -> Path:
    """The python of a venv holding only ``tinker==TINKER_LATEST`` and its dependencies (built once, atomically)."""
    default = Path.home() / ".cache" / "twinkle-tests" / f"tinker-{TINKER_LATEST}"
    venv = Path(os.environ.get("TWINKLE_TINKER_LATEST_VENV", default))
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import tinker; print(tinker.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == TINKER_LATEST:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=venv.name + ".", dir=venv.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(build)], check=True)
        pip = subprocess.run([str(build / "bin" / "python"), "-m", "pip", "install", "-q",
                              f"tinker=={TINKER_LATEST}"], capture_output=True, text=True, timeout=600)
        assert pip.returncode == 0, f"pip install tinker=={TINKER_LATEST} failed (needs PyPI):\n{pip.stderr[-3000:]}"
        # only `python` and `python -m` are used, and those do not care where the venv was built
        shutil.rmtree(venv, ignore_errors=True)
        build.rename(venv)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return python


@pytest.fixture(scope="module")
def url(tiny_model_dir, tmp_path_factory):
    from twinkle.server import ServerConfig
    from twinkle.server.settings import ServerSettings

    save = tmp_path_factory.mktemp("tinker-latest-ckpt")
    config = ServerConfig.single_model(str(tiny_model_dir), name="tiny", max_loras=4, port=free_port())
    url, stop = serve_in_thread(config, ServerSettings(default_save_dir=str(save), cache_dir=str(save / ".c")))
    yield url
    stop()


@pytest.fixture(scope="module")
def latest_python() -> Path:
    return latest_sdk_python()


def sdk(python: Path, *args: str, stdin: str = "") -> dict:
    proc = subprocess.run([str(python), str(HERE / "tinker_latest_codec.py"), *args], input=stdin,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_our_decoder_reads_what_the_sdk_encodes(latest_python):
    from twinkle.server.tinker_proto import decode_forward_backward_request

    body = decode_forward_backward_request(bytes.fromhex(sdk(latest_python, "request")["hex"]))
    assert (body["model_id"], body["seq_id"], body["forward_only"]) == ("run-1", 7, True)
    fb = body["forward_backward_input"]
    assert fb["loss_fn"] == "importance_sampling" and fb["loss_fn_config"] == {"epsilon": 0.2, "mode": "x"}
    assert len(fb["data"]) == 2
    datum = fb["data"][0]
    assert [c["tokens"] for c in datum["model_input"]["chunks"]] == [[5, 6, 7], [2**31 - 1, 0]]
    inputs = datum["loss_fn_inputs"]
    assert inputs["target_tokens"] == {"data": [6, 7, 8, 9, 10], "dtype": "int64", "shape": [5]}
    assert inputs["weights"] == {"data": [0.0, 0.5, 1.0, 1.0, 0.25], "dtype": "float32", "shape": [5]}
    # sparse CSR arrives dense: row 0 has 1.5 at column 2, row 1 has -2.0 at column 0
    assert inputs["mask"] == {"data": [0.0, 0.0, 1.5, -2.0, 0.0, 0.0], "dtype": "float32", "shape": [2, 3]}


def test_the_sdk_reads_what_our_encoders_write(latest_python):
    from twinkle.server.tinker_proto import encode_forward_backward_output, encode_sample_response

    ours = {"loss_fn_output_type": "CrossEntropyLossReturn",
            "loss_fn_outputs": [{"logprobs": {"data": [-0.5, -1.25, -3.0], "dtype": "float32", "shape": [3]},
                                 "elementwise_loss": {"data": [0.0, 1.25, 3.0], "dtype": "float32", "shape": [3]}},
                                {"logprobs": {"data": [-2.0], "dtype": "float32", "shape": [1]},
                                 "elementwise_loss": {"data": [2.0], "dtype": "float32", "shape": [1]}}],
            "metrics": {"loss:mean": 1.5625, "loss:sum": 6.25}}
    back = sdk(latest_python, "response", "fb", stdin=encode_forward_backward_output(ours).hex())
    assert back["loss_fn_output_type"] == "CrossEntropyLossReturn" and back["metrics"] == ours["metrics"]
    assert back["loss_fn_outputs"] == ours["loss_fn_outputs"]

    sample = {"sequences": [{"stop_reason": "length", "tokens": [9, 2**31 - 1, 0], "logprobs": [-0.25, -1.5, -7.0]},
                            {"stop_reason": "stop", "tokens": [4], "logprobs": None}]}
    assert sdk(latest_python, "response", "sample", stdin=encode_sample_response(sample).hex()) == sample


def test_the_sdks_own_pb2_and_our_codec_live_in_one_process(latest_python):
    # the SDK's generated module puts tinker_public.proto in protobuf's default pool; ours is in a private pool.
    # Loaded here from the 0.38 venv under another module name, next to ours, in this venv's python
    pb2 = next(latest_python.parent.parent.glob("lib/python*/site-packages/tinker/proto/tinker_public_pb2.py"))
    code = f"""
import importlib.util
from twinkle.server import tinker_proto
spec = importlib.util.spec_from_file_location("sdk_tinker_public_pb2", {str(pb2)!r})
sdk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sdk)
msg = sdk.ForwardBackwardRequest(model_id="run-1", seq_id=3, forward_only=True)
body = tinker_proto.decode_forward_backward_request(msg.SerializeToString())
assert (body["model_id"], body["seq_id"], body["forward_only"]) == ("run-1", 3, True), body
out = sdk.SampleResponse.FromString(tinker_proto.encode_sample_response({{"sequences": [{{"tokens": [4]}}]}}))
assert out.sequences[0].tokens == (4).to_bytes(4, "little"), out  # int32 little-endian
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_a_bad_protobuf_body_is_a_400_naming_the_rule(url):
    import requests
    from test_tinker_proto import csr, request_with_tensor

    headers = {"X-API-Key": "tml-proto-eve", "Content-Type": "application/x-protobuf"}
    huge = request_with_tensor(dtype=1, shape=[1, 2**40], sparse_csr=csr([], [0, 0], []))
    for body, rule in [(b"\x0a\xff\xff\xff", "not a tinker_public.ForwardBackwardRequest"),
                       (huge, "larger than 16777216 values once dense")]:
        r = requests.post(f"{url}/api/v1/forward_backward", data=body, headers=headers, timeout=30)
        assert r.status_code == 400 and "bad ForwardBackwardRequest protobuf" in r.text and rule in r.text, r.text


@pytest.fixture(scope="module")
def seen(url, latest_python) -> dict:
    python = latest_python
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "PYTHONPATH"))}
    proc = subprocess.run([str(python), str(HERE / "tinker_latest_flows.py"), url], capture_output=True,
                          text=True, timeout=600, env=env | {"TINKER_TELEMETRY": "0"})
    assert proc.returncode == 0, f"the {TINKER_LATEST} flows failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_latest_sdk_is_really_the_latest_release_unpatched(seen):
    assert seen["sdk_version"] == TINKER_LATEST
    assert seen["models"] == ["tiny"] and seen["lora_rank"] == 8


def test_sft_with_cross_entropy_and_adam_lowers_the_loss(seen):
    losses = seen["sft_losses"]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])
    # per-datum outputs arrive as protobuf: one log-prob per target token; elementwise loss = -logprob * weight
    assert seen["logprobs_len"] == 16
    assert seen["elementwise_loss"][:4] == [0.0] * 4 and all(x > 0 for x in seen["elementwise_loss"][4:])


def test_forward_only_and_save_load_state_round_trip(seen):
    # forward (forward_only on the protobuf route) computes the loss without training: the next
    # forward_backward sees the same weights; after two more steps, load_state brings that loss back
    assert seen["loss_after_save"] == pytest.approx(seen["forward_only_loss"], abs=1e-5)
    assert seen["loss_after_load"] == pytest.approx(seen["loss_after_save"], abs=1e-5)
    assert seen["saved"].startswith("tinker://") and seen["saved"].endswith("/weights/after8")


def test_checkpoints_are_listed_for_their_owner_only(seen):
    run_id = seen["saved"].split("/")[2]
    assert seen["checkpoints"] == [seen["saved"]]
    assert run_id in seen["runs"]
    assert run_id not in seen["other_runs"]
    assert "NotFoundError" in seen["other_load"] and "not found" in seen["other_load"]


def test_sampling_from_trained_weights_returns_protobuf_sequences_with_ids(seen):
    samples = seen["samples"]
    assert len(samples) == 2 and samples[0]["tokens"] == samples[1]["tokens"]  # greedy
    assert 0 < len(samples[0]["tokens"]) == len(samples[0]["logprobs"]) <= 4
    assert all(lp <= 0 for lp in samples[0]["logprobs"])
    assert samples[0]["id"] != samples[1]["id"] and samples[0]["stop"] in ("length", "stop")
    assert "/sampler_weights/named" in seen["named"]
    assert seen["named_sample"] == samples[0]["tokens"]  # the same weights, saved under a name


def test_importance_sampling_moves_log_probs_with_the_advantages(seen):
    lps = seen["rl_mean_logprobs"]
    assert seen["rl_output_type"] == "ImportanceSamplingLossReturn"
    assert lps[-1][0] > lps[0][0]  # positive advantage: more likely
    assert lps[-1][1] < lps[0][1]  # negative advantage: less likely


def test_an_unoffered_loss_is_a_clear_error(seen):
    assert "BadRequestError" in seen["ppo"] and "not offered yet" in seen["ppo"]
