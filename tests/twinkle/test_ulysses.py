"""Ulysses sequence parallelism (ulysses_size=2) for the Transformers backend on 2 gloo ranks: the per-step losses
equal one process's to 1e-5, over a dp mesh (DDP) and with FSDP2, while each rank holds half of every sequence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sp_train.py")


def _run(layout: str, nproc: int, model_dir: str) -> tuple[list[float], list[list[int]]]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TWINKLE_MODE")}
    env.update(OMP_NUM_THREADS="1", SP_MODEL_DIR=model_dir)
    cmd = [sys.executable, str(SCRIPT), layout]
    if nproc > 1:
        from tests.conftest import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), str(SCRIPT), layout]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("LOSSES", "WIDTHS")))
    return json.loads(lines["LOSSES"]), json.loads(lines["WIDTHS"])


@pytest.fixture(scope="module")
def reference(model_dir):
    return _run("none", 1, model_dir)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp", "fsdp"])
def test_ulysses_sp2_matches_one_process(reference, model_dir, layout):
    ref_losses, ref_widths = reference
    losses, widths = _run(layout, 2, model_dir)
    assert len(losses) == len(ref_losses) == 6
    assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    assert all(local == full for local, full in ref_widths)  # one process: the whole sequence
    assert all(local == -(-full // 2) for local, full in widths), widths  # sp=2: each rank half of it


def test_ulysses_shard_pads_and_slices():
    import torch

    from twinkle.model.transformers import _ulysses

    _ulysses._state.update(size=2, rank=1)
    try:
        batch = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[6, 7, -100]]),
                 "attention_mask": torch.ones(1, 3, dtype=torch.long)}
        out = _ulysses.shard_batch(batch)
        assert out["input_ids"].tolist() == [[7, 0]] and out["labels"].tolist() == [[-100, -100]]
        assert out["position_ids"].tolist() == [[2, 3]] and "attention_mask" not in out
        with pytest.raises(Exception, match="padding-free"):
            _ulysses.shard_batch({**batch, "cu_seq_lens_q": torch.tensor([0, 3])})
    finally:
        _ulysses._state.update(size=1, rank=0)
