"""examples/grpo_ray.py end to end on CPU Ray groups: a model group and a sampler group, a gloo weight sync every
step, GSM8K rewards, GRPOAdvantage and GRPOLoss; the reward rises, and a frozen policy's does not.

The bundled tiny model is random and never writes "####" by itself, so it first gets a short supervised warm start
on the answer *format* only ("#### <digit>" with the digits rotating, so no answer is taught): after it about a
quarter of the samples carry a well-formed final answer (format reward) and almost none the right number. GRPO
then has to raise the GSM8K reward from there. (Measured here: 10 warm-start steps take about 25 s on a loaded
2-core machine, 20 GRPO steps under Ray about 60 s.)
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "grpo_ray.py"


def _example_module():
    spec = importlib.util.spec_from_file_location("grpo_ray_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def warm_model(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model after a format-only warm start (local mode, one process)."""
    import twinkle
    from twinkle.infra import _state
    from twinkle.model import TransformersModel

    prompts = _example_module().gsm8k_rows()
    twinkle.initialize(mode="local", seed=0)
    model = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    model.set_optimizer("AdamW", lr=3e-2)
    for step in range(10):
        rows = []
        for i, row in enumerate(prompts):
            for j in range(2):
                digit = (2 * step + j + 3 * i) % 10  # every question sees every digit: the format, not the answer
                rows.append({**row, "messages": row["messages"] + [{"role": "assistant", "content": f"#### {digit}"}]})
        model.forward_backward(inputs=rows)
        model.clip_grad_and_step()
    path = model.save("warm", output_dir=str(tmp_path_factory.mktemp("warm")))
    _state.reset()
    return str(path)


def _run(model_id: str, tmp_path: Path, lr: str, steps: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TWINKLE_MODE")}
    env.update({"MODEL_ID": model_id, "LORA": "0", "LR": lr, "STEPS": str(steps), "LOG_EVERY": "2",
                "TWINKLE_OUTPUT_DIR": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", "TWINKLE_RAY_NUM_CPUS": "2",
                "PYTHONUNBUFFERED": "1"})
    proc = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=560,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rewards = [float(x) for x in re.findall(r"^step \d+: mean reward ([0-9.]+)", proc.stdout, re.MULTILINE)]
    assert len(rewards) == steps // 2 and "saved " in proc.stdout, proc.stdout
    return rewards


def test_grpo_under_ray_raises_the_gsm8k_reward(warm_model, tmp_path):
    rewards = _run(warm_model, tmp_path, lr="3e-3", steps=20)
    # from about 0.3 (a quarter well-formed, almost none right) the reward climbs
    assert rewards[0] < 0.7 and rewards[-1] > rewards[0] + 0.25, rewards


def test_grpo_under_ray_with_a_frozen_policy_stays_put(warm_model, tmp_path):
    rewards = _run(warm_model, tmp_path, lr="0", steps=6)  # the same loop, lr 0: the reward must not climb
    assert max(rewards) < 0.6, rewards
