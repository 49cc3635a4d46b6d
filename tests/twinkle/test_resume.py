"""Stop after k optimizer steps with a resumable checkpoint, resume in a new process: the losses go on unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "self_cognition.py"
pytestmark = pytest.mark.slow


def run(tmp_path: Path, tag: str, out: Path, **env: str) -> list[tuple[int, float]]:
    metrics = tmp_path / f"{tag}.jsonl"
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "DATASET_ID", "LR", "WORLD_SIZE", "RANK")},
        "TWINKLE_OUTPUT_DIR": str(out),
        "TWINKLE_METRICS_FILE": str(metrics),
        "LOG_EVERY": "2",
        "DATA_ROWS": "128",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    proc = subprocess.run([sys.executable, str(EXAMPLE)], env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [(r["step"], r["metrics"]["loss"]) for r in map(json.loads, metrics.read_text().splitlines())]


def test_resume_continues_the_losses_of_an_uninterrupted_run(assets_dir, tmp_path):
    full = run(tmp_path, "full", tmp_path / "full")
    assert [s for s, _ in full] == list(range(1, 9))

    # attempt 1 dies after 3 optimizer steps (48 rows: mid-epoch), having saved a resumable checkpoint
    first = run(tmp_path, "first", tmp_path / "attempt", SAVE_EVERY="3", MAX_STEPS="3")
    checkpoint = tmp_path / "attempt" / "checkpoint-step-6"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state == {"cur_step": 6, "gradient_accumulation_steps": 2, "consumed_train_samples": 48,
                     "adapter_name": "default"}
    assert first == full[:3]

    # attempt 2, a new process, resumes the way the platform asks it to
    second = run(tmp_path, "second", tmp_path / "attempt", TWINKLE_RESUME_FROM=str(checkpoint))
    assert [s for s, _ in second] == list(range(4, 9))
    assert [loss for _, loss in second] == pytest.approx([loss for _, loss in full[3:]], rel=1e-6)
