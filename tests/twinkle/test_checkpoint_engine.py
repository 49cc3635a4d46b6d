"""The checkpoint engine on the CPU: bucketing and chunking, the sync topology, weight-name rules, backend choice,
and the gloo engine moving weights between real processes (a sender, a non-participating trainer rank and two
receivers), every received tensor compared bit for bit with what was sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from twinkle.checkpoint_engine import (
    CheckpointEngineManager,
    GlooCheckpointEngine,
    NCCLCheckpointEngine,
    decide_backend_engine,
)
from twinkle.checkpoint_engine._bucket import ALIGN, BucketReader, pack_buckets
from twinkle.checkpoint_engine._names import expand_model_keys, match_target_key
from twinkle.checkpoint_engine.mixin import engine_for_device
from twinkle.errors import ConfigError, MissingDependencyError


def sample_weights() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn(3, 5, generator=g)),
        ("b.bias", torch.randn(7, generator=g).to(torch.bfloat16)),
        ("big.weight", torch.randn(40, 30, generator=g)),  # 4800 bytes: larger than the bucket below, chunked
        ("scalar", torch.tensor(2.5, dtype=torch.float64)),
        ("empty", torch.zeros(0, 4)),
        ("ids", torch.arange(9, dtype=torch.int64).reshape(3, 3).t()),  # not contiguous
        ("mask", torch.tensor([True, False, True])),
    ]


def test_buckets_round_trip_every_dtype_and_shape_with_chunking():
    weights = sample_weights()
    bucket_size = 1024
    buckets = list(pack_buckets(weights, bucket_size))
    assert len(buckets) > 5 and buckets[-1].is_last and not any(b.is_last for b in buckets[:-1])
    assert all(b.used <= bucket_size for b in buckets)
    assert all(m["offset"] % ALIGN == 0 for b in buckets for m in b.metas)
    chunks = [m for b in buckets for m in b.metas if m["name"] == "big.weight"]
    assert len(chunks) == 5 and sum(m["nbytes"] for m in chunks) == 4800 == chunks[0]["total_nbytes"]
    reader, buffer, out = BucketReader(), torch.empty(bucket_size, dtype=torch.uint8), {}
    for bucket in buckets:  # what a receiver does: one reused buffer, copy what it keeps
        bucket.write_into(buffer)
        out.update({name: t.clone() for name, t in reader.read(bucket.metas, buffer)})
    reader.check_done()
    assert list(out) == [name for name, _ in weights]
    for name, tensor in weights:
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape and torch.equal(out[name], tensor)


def test_an_empty_stream_still_ends_and_a_tensor_too_big_for_nccl_is_refused():
    [only] = list(pack_buckets([], 256))
    assert only.is_last and only.used == 0 and only.metas == []
    with pytest.raises(ValueError, match="raise the bucket size"):
        list(pack_buckets([("w", torch.zeros(100))], 256, chunk=False))


def test_topology_trainer_rank0_sends_and_rollouts_are_ranks_1_to_n():
    trainer, rollout = GlooCheckpointEngine.build_topology(3, 2, [{"store_host": "h", "store_port": 1}])
    assert trainer["rank"] == [0, -1, -1] and trainer["world_size"] == [3, 3, 3]
    assert rollout["rank"] == [1, 2] and rollout["world_size"] == [3, 3]
    assert trainer["master_metadata"] == rollout["master_metadata"][:1] * 3


def test_weight_names_fused_vllm_keys_and_base_layer_mapping():
    keys = expand_model_keys(["model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight",
                              "language_model.model.norm.weight", "visual.blocks.0.attn.weight"])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                 "model.layers.0.mlp.up_proj.weight", "model.language_model.norm.weight",
                 "model.visual.blocks.0.attn.weight"):
        assert name in keys
    plain = {"model.q_proj.weight", "model.norm.weight"}
    wrapped = {"model.q_proj.base_layer.weight", "model.norm.weight"}
    assert match_target_key("base_model.model.model.q_proj.base_layer.weight", plain) == "model.q_proj.weight"
    assert match_target_key("model.q_proj.weight", wrapped) == "model.q_proj.base_layer.weight"
    assert match_target_key("model.other.weight", plain) is None


def test_backend_choice_and_gpu_engines_say_what_is_missing(monkeypatch):
    assert decide_backend_engine("CPU") is GlooCheckpointEngine
    assert decide_backend_engine("GPU") is NCCLCheckpointEngine
    with pytest.raises(NotImplementedError, match="'GPU', 'NPU' or 'CPU'"):
        decide_backend_engine("TPU")
    assert isinstance(engine_for_device("cpu"), GlooCheckpointEngine)
    monkeypatch.setenv("TWINKLE_CKPT_BUCKET_BYTES", "4096")
    assert engine_for_device("cpu").bucket_size == 4096
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match=r"twinkle-commons\[vllm\]"):
            NCCLCheckpointEngine()
    from twinkle.checkpoint_engine import HCCLCheckpointEngine

    with pytest.raises(MissingDependencyError, match="not ported"):
        HCCLCheckpointEngine()


def test_the_manager_needs_ray_proxies_and_says_what_to_do_in_one_process():
    with pytest.raises(ConfigError, match=r"receive_weights\(model\)"):
        CheckpointEngineManager(object(), object())


# ---------------------------------------------------------------- gloo between real processes

PROCESS = textwrap.dedent('''
    import json, sys
    import torch
    from twinkle.checkpoint_engine import GlooCheckpointEngine
    from twinkle.checkpoint_engine._util import run_coroutine
    sys.path.insert(0, sys.argv[3])
    from test_checkpoint_engine import sample_weights

    role, meta = sys.argv[1], json.loads(sys.argv[2])
    rank = {"sender": 0, "idle": -1, "r1": 1, "r2": 2}[role]
    engine = GlooCheckpointEngine(bucket_size=1024)
    engine.is_master = rank == 0
    engine.prepare()
    for sync in range(2):  # two syncs over the same group (rebuild_group=False keeps it)
        engine.init_process_group(rank, 3, meta)
        weights = [(n, t * (sync + 1) if t.is_floating_point() else t) for n, t in sample_weights()]
        if rank <= 0:
            seen = []
            run_coroutine(engine.send_weights((seen.append(n) or (n, t)) for n, t in weights))
            assert seen == [n for n, _ in weights], seen  # every trainer rank iterates the whole generator
        else:
            async def drain():
                return [(n, t.clone()) async for n, t in engine.receive_weights()]
            got = run_coroutine(drain())
            assert [n for n, _ in got] == [n for n, _ in weights]
            for (n, t), (_, expected) in zip(got, weights):
                assert t.dtype == expected.dtype and torch.equal(t, expected), n
        engine.finalize()
    print("ok", role, flush=True)
''')


@pytest.mark.slow
def test_gloo_engine_moves_weights_between_processes(tmp_path):
    from twinkle.checkpoint_engine._util import free_port

    script = tmp_path / "member.py"
    script.write_text(PROCESS)
    meta = json.dumps({"store_host": "127.0.0.1", "store_port": free_port()})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    here = str(Path(__file__).parent)
    procs = {role: subprocess.Popen([sys.executable, str(script), role, meta, here], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role in ("sender", "idle", "r1", "r2")}
    outputs = {role: p.communicate(timeout=240) for role, p in procs.items()}
    for role, p in procs.items():
        assert p.returncode == 0 and f"ok {role}" in outputs[role][0], (role, p.returncode, outputs[role])

