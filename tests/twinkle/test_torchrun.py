"""The example under torchrun (gloo on the CPU): dp=2 and FSDP2 give the per-step losses of one process.

Tolerance: relative 1e-4 per step. The runs differ only in how float32 sums are ordered (all-reduce of
per-rank gradient sums, padding to each rank's longest row), which moves the 7th digit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.testing.net import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "self_cognition.py"
pytestmark = pytest.mark.slow


def run_example(tmp_path: Path, tag: str, nproc: int = 1, **env: str) -> list[float]:
    metrics = tmp_path / f"{tag}.jsonl"
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "DATASET_ID", "LR", "WORLD_SIZE", "RANK")},
        "TWINKLE_OUTPUT_DIR": str(tmp_path / tag),
        "TWINKLE_METRICS_FILE": str(metrics),
        "LOG_EVERY": "2",
        "DATA_ROWS": "96",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    if nproc == 1:
        cmd = [sys.executable, str(EXAMPLE)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), str(EXAMPLE)]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line)["metrics"]["loss"] for line in metrics.read_text().splitlines()]


@pytest.fixture(scope="module")
def single(assets_dir, tmp_path_factory) -> list[float]:
    return run_example(tmp_path_factory.mktemp("single"), "single")


def test_dp2_matches_one_process(single, tmp_path):
    losses = run_example(tmp_path, "dp2", nproc=2)
    assert len(losses) == len(single) == 6
    assert losses == pytest.approx(single, rel=1e-4)


def test_fsdp2_matches_one_process(single, tmp_path):
    losses = run_example(tmp_path, "fsdp2", nproc=2, FSDP_SIZE="2")
    assert losses == pytest.approx(single, rel=1e-4)
    assert (tmp_path / "fsdp2" / "last-checkpoint" / "adapter_model.safetensors").exists()
