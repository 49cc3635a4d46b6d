"""examples/self_cognition.py, run in this process on the tiny model: it trains, and its checkpoint reloads."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

import twinkle.model
from twinkle.infra import _state

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "self_cognition.py"


@pytest.fixture()
def run_example(assets_dir, tmp_path, monkeypatch):
    """Run the example's main() here (so its model object can be inspected), then forget the global mesh."""
    for key in ("MODEL_ID", "DATASET_ID", "LR", "WORLD_SIZE", "RANK", "TWINKLE_RESUME_FROM", "MAX_STEPS", "SAVE_EVERY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TWINKLE_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TWINKLE_METRICS_FILE", str(tmp_path / "metrics.jsonl"))
    monkeypatch.setenv("LOG_EVERY", "2")  # one metrics record per optimizer step (gas=2)
    seen = []
    original_save = twinkle.model.TransformersModel.save

    def save(self, *args, **kwargs):
        seen.append(self)
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(twinkle.model.TransformersModel, "save", save)

    def run():
        runpy.run_path(str(EXAMPLE), run_name="__main__")
        records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        return seen[-1], records

    yield run
    _state.reset()


def test_self_cognition_trains_and_its_checkpoint_reloads(run_example, tmp_path, tiny_model_dir, capsys):
    model, records = run_example()
    out = capsys.readouterr().out
    assert "step 20: {" in out and "saved " in out
    # one step: the log prints the optimizer step, the same number the metrics (and the platform's charts) say
    printed = [int(line.split(":")[0].split()[1]) for line in out.splitlines() if line.startswith("step ")]
    assert printed == [r["step"] for r in records]

    losses = [r["metrics"]["loss"] for r in records]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert len(losses) == 20  # 320 rows / batch 8 / gas 2
    tenth = max(1, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    print(f"mean loss, first tenth {first:.4f} -> last tenth {last:.4f} ({(last - first) / first:+.1%})")
    assert last < 0.93 * first
    assert {"loss", "grad_norm", "accuracy", "lr", "iters", "speed"} <= set(records[-1]["metrics"])

    checkpoint = tmp_path / "out" / "last-checkpoint"
    assert (checkpoint / "adapter_model.safetensors").exists() and (checkpoint / "tokenizer.json").exists()
    fresh = twinkle.model.TransformersModel(model_id=str(tiny_model_dir))
    fresh.add_adapter_to_model("default", str(checkpoint))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (2, 24), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.roll(-1, 1)}
    trained = model.forward_only(inputs=batch, return_logits=True)["logits"]
    reloaded = fresh.forward_only(inputs=batch, return_logits=True)["logits"]
    assert torch.equal(trained, reloaded)
