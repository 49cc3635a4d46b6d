"""The switches the platform sets in a job's environment for spot-check replays (twinkle/infra/_job_env.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import twinkle

ROOT = Path(__file__).resolve().parents[2]


def test_twinkle_deterministic_forces_deterministic_kernels(monkeypatch):
    monkeypatch.setenv("TWINKLE_DETERMINISTIC", "1")
    try:
        twinkle.initialize(mode="local", full_determinism=False)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_without_the_switch_the_script_decides(monkeypatch):
    monkeypatch.delenv("TWINKLE_DETERMINISTIC", raising=False)
    twinkle.initialize(mode="local", full_determinism=False)
    assert not torch.are_deterministic_algorithms_enabled()


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


STEPS = (
    "from twinkle.infra._job_env import stop_if_reached\n"
    "for step in range(1, 6):\n"
    "    print(f'step {step}', flush=True)\n"
    "    try:\n"
    "        stop_if_reached(step)\n"
    "    except BaseException:\n"  # a script's own catch-all cannot keep it going
    "        print('caught', flush=True)\n"
    "print('ran to the end', flush=True)\n"
)


def test_stop_after_steps_exits_cleanly_at_step_k():
    r = _run(STEPS, TWINKLE_STOP_AFTER_STEPS="3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["step", "1", "step", "2", "step", "3"]
    assert "stopping after optimizer step 3" in r.stderr


def test_without_stop_after_steps_the_script_runs_to_its_end():
    r = _run(STEPS, TWINKLE_STOP_AFTER_STEPS="")
    assert r.returncode == 0 and "ran to the end" in r.stdout and "caught" not in r.stdout
