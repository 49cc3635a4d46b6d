"""The examples written the upstream way (configured by twinkle.cli flags), each trained as a real child process:
SFT with FSDP2 under torchrun, DPO with LoRA, DPO full with a reference model, GRPO with TorchSampler."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_STEP = re.compile(r"\] step (\d+): (?:mean reward ([0-9.]+) )?(\{.*\})$")


def _run(script: str, flags: list[str], tmp_path: Path, nproc: int = 1) -> tuple[list[tuple[int, float | None, dict]], Path]:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TWINKLE_MODE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(EXAMPLES / script)]
    if nproc > 1:
        from tests.conftest import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), str(EXAMPLES / script)]
    proc = subprocess.run(cmd + flags + ["--output-dir", str(out)], env=env, capture_output=True, text=True,
                          timeout=540, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = []
    for line in proc.stderr.splitlines():
        match = _STEP.search(line)
        if match:
            reward = float(match.group(2)) if match.group(2) else None
            records.append((int(match.group(1)), reward, ast.literal_eval(match.group(3))))
    return records, out


@pytest.mark.slow
def test_sft_fsdp2_under_torchrun(tmp_path):
    records, out = _run("sft_fsdp2.py", ["--fsdp-size", "2", "--lr", "5e-3", "--max-steps", "12", "--log-interval",
                                         "4", "--train-samples", "96"], tmp_path, nproc=2)
    # get_logger logs on the local master only: one line per interval, not one per rank
    assert [r[0] for r in records] == [4, 8, 12], records
    losses = [float(r[2]["loss"]) for r in records]
    assert losses[-1] < losses[0], losses
    assert (out / "last-checkpoint" / "adapter_model.safetensors").stat().st_size > 0


@pytest.mark.slow
def test_dpo_lora(tmp_path):
    records, out = _run("dpo_lora.py", ["--lr", "5e-3", "--max-steps", "8", "--log-interval", "4", "--batch-size",
                                        "4"], tmp_path)
    first, last = records[0][2], records[-1][2]
    assert float(last["rewards/margins"]) > float(first["rewards/margins"]) > 0, records
    assert float(last["loss"]) < float(first["loss"]), records
    assert (out / "last-checkpoint" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_dpo_full_with_a_reference_model(tmp_path):
    records, out = _run("dpo_full.py", ["--lr", "1e-3", "--max-steps", "8", "--log-interval", "4", "--batch-size",
                                        "4"], tmp_path)
    first, last = records[0][2], records[-1][2]
    # the reference model is never stepped: its log-probabilities stay where the policy started
    assert float(last["rewards/margins"]) > float(first["rewards/margins"]), records
    assert last["rewards/accuracies"].endswith("%") and float(last["loss"]) < float(first["loss"]), records
    assert any(p.name.endswith(".safetensors") for p in (out / "last-checkpoint").iterdir())


@pytest.mark.slow
def test_grpo_with_torch_sampler(tmp_path):
    records, out = _run("grpo_torch_sampler.py", ["--lr", "3e-3", "--max-steps", "24", "--log-interval", "8",
                                                  "--batch-size", "2"], tmp_path)
    rewards = [r[1] for r in records]
    assert len(rewards) == 3 and rewards[-1] > rewards[0] + 0.05, rewards
    assert (out / "last-checkpoint").exists()


@pytest.mark.slow
def test_sft_with_sequence_parallelism_under_torchrun(tmp_path):
    records, out = _run("sp_fsdp_dense.py", ["--fsdp-size", "2", "--ulysses-size", "2", "--lr", "1e-3",
                                             "--max-steps", "8", "--log-interval", "4", "--train-samples", "64"],
                        tmp_path, nproc=2)
    losses = [float(r[2]["loss"]) for r in records]
    assert [r[0] for r in records] == [4, 8] and losses[-1] < losses[0], records
    assert any(p.name.endswith(".safetensors") for p in (out / "last-checkpoint").iterdir())
