"""Padding-free training: a padded batch packed into one row gives the padded run's per-row losses and gradients."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig

from twinkle.model import TransformersModel
from twinkle.model.transformers import _packing

LENGTHS = [5, 17, 9, 30, 12]


def ragged_batch(lengths=LENGTHS, side: str = "right", seed: int = 0, vocab: int = 200) -> dict[str, torch.Tensor]:
    """Rows of different lengths padded to the longest (as InputProcessor pads), a prompt without labels."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    out = {
        "input_ids": torch.zeros(len(lengths), width, dtype=torch.long),
        "attention_mask": torch.zeros(len(lengths), width, dtype=torch.long),
        "position_ids": torch.full((len(lengths), width), -1, dtype=torch.long),
        "labels": torch.full((len(lengths), width), -100, dtype=torch.long),
    }
    for i, n in enumerate(lengths):
        ids = torch.randint(3, vocab, (n,), generator=g)
        labels = ids.roll(-1)
        labels[: n // 3] = -100
        labels[-1] = -100
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        out["input_ids"][i, cols] = ids
        out["attention_mask"][i, cols] = 1
        out["position_ids"][i, cols] = torch.arange(n)
        out["labels"][i, cols] = labels
    return out


def make_model(model_dir, padding_free: bool, **kw) -> TransformersModel:
    torch.manual_seed(0)
    m = TransformersModel(model_id=str(model_dir), gradient_checkpointing=False, padding_free=padding_free, **kw)
    torch.manual_seed(1)
    m.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
    m.set_optimizer("AdamW", lr=1e-2)
    return m


def row_losses(logps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask = labels != -100
    return -(logps * mask).sum(1) / mask.sum(1)


def record_shapes(m: TransformersModel) -> dict[str, list]:
    """Shapes the embedding and the LM head see (hooks on the real modules)."""
    seen: dict[str, list] = {"embed": [], "head": []}
    base = m.model.get_base_model()
    base.get_input_embeddings().register_forward_hook(lambda mod, a, out: seen["embed"].append(tuple(a[0].shape)))
    base.get_output_embeddings().register_forward_hook(lambda mod, a, out: seen["head"].append(tuple(a[0].shape[:2])))
    return seen


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_per_row_losses_and_grads_equal_the_padded_run(tiny_model_dir, side):
    batch = ragged_batch(side=side)
    padded, packed = make_model(tiny_model_dir, False), make_model(tiny_model_dir, True)
    seen = record_shapes(packed)
    out_pad = padded.forward_backward(inputs=batch)
    out_pack = packed.forward_backward(inputs=batch)

    n_real = sum(LENGTHS)
    n_labelled = int((batch["labels"] != -100).sum())
    assert seen["embed"] == [(1, n_real)]  # one packed row: no padding token went through the model
    assert seen["head"] == [(1, n_labelled)]  # logits only where a label is
    assert out_pack["logps"].shape == batch["labels"].shape  # callers still get the padded layout
    per_row_pad = row_losses(out_pad["logps"], batch["labels"])
    per_row_pack = row_losses(out_pack["logps"], batch["labels"])
    assert torch.allclose(per_row_pack, per_row_pad, atol=1e-5, rtol=0), (per_row_pack, per_row_pad)
    assert abs(float(out_pack["loss"]) - float(out_pad["loss"])) < 1e-4  # the token sum

    grads_pad = {k: p.grad for k, p in padded.model.named_parameters() if p.grad is not None}
    grads_pack = {k: p.grad for k, p in packed.model.named_parameters() if p.grad is not None}
    assert grads_pad.keys() == grads_pack.keys() and grads_pad
    for key, grad in grads_pad.items():
        assert torch.allclose(grads_pack[key], grad, atol=1e-5, rtol=1e-4), key


def test_packed_training_follows_the_padded_run_step_by_step(tiny_model_dir):
    """Five optimizer steps with gradient accumulation: the same losses, metrics and final adapter."""
    runs = {}
    for padding_free in (False, True):
        m = make_model(tiny_model_dir, padding_free)
        m.optimizer_groups["default"].gradient_accumulation_steps = 2
        losses = []
        for step in range(10):
            out = m.forward_backward(inputs=ragged_batch(seed=step % 2))
            m.clip_grad_and_step()
            losses.append(float(out["loss"]))
        metrics = m.calculate_metric(is_training=True)
        lora_state = {k: v.detach().clone() for k, v in m.model.named_parameters() if "lora_" in k}
        runs[padding_free] = (losses, metrics, lora_state, m.optimizer_groups["default"].consumed_train_samples)
    (l0, m0, s0, c0), (l1, m1, s1, c1) = runs[False], runs[True]
    assert l0[8] < l0[0]  # it trained (the same batch, eight micro-batches later)
    assert l1 == pytest.approx(l0, abs=1e-4)
    assert c1 == c0 == 10 * len(LENGTHS)  # samples counted by row, not by packed row
    assert m1["total_tokens"] == m0["total_tokens"] and float(m1["accuracy"]) == pytest.approx(float(m0["accuracy"]))
    assert float(m1["loss"]) == pytest.approx(float(m0["loss"]), abs=1e-4)
    for key, value in s0.items():
        assert torch.allclose(s1[key], value, atol=1e-5), key


def test_rows_from_the_dataloader_path_are_packed(tiny_model_dir, template, chat):
    """Encoded rows (what the DataLoader yields) go through the default processor and are packed."""
    rows = [template.encode(chat("hi", "hello there")), template.encode(chat("who are you? " * 5, "a robot " * 9))]
    padded, packed = make_model(tiny_model_dir, False), make_model(tiny_model_dir, True)
    seen = record_shapes(packed)
    a = padded.forward_only(inputs=rows)["logps"]
    b = packed.forward_only(inputs=rows)["logps"]
    assert seen["embed"] == [(1, sum(int(r["length"]) for r in rows))]
    assert torch.allclose(a, b, atol=1e-5)


def test_return_logits_packs_but_computes_every_logit(tiny_model_dir):
    batch = ragged_batch()
    padded, packed = make_model(tiny_model_dir, False), make_model(tiny_model_dir, True)
    seen = record_shapes(packed)
    a = padded.forward_only(inputs=batch, return_logits=True)["logits"]
    b = packed.forward_only(inputs=batch, return_logits=True)["logits"]
    assert seen["head"] == [(1, sum(LENGTHS))]
    real = batch["attention_mask"].bool()
    assert torch.allclose(a[real], b[real], atol=1e-5)
    assert b[~real].abs().sum() == 0  # padding positions were never computed


def test_row_level_losses_and_the_off_switch_keep_padded_rows(tiny_model_dir):
    batch = ragged_batch()
    dpo = make_model(tiny_model_dir, True)
    dpo.set_loss("DPOLoss")
    seen = record_shapes(dpo)
    dpo.forward_only(inputs=batch)
    assert seen["embed"] == [tuple(batch["input_ids"].shape)]  # DPO pairs rows: not packed

    off = make_model(tiny_model_dir, False)
    seen = record_shapes(off)
    off.forward_only(inputs=batch)
    assert seen["embed"] == [tuple(batch["input_ids"].shape)]
    assert off.model.config._attn_implementation == "sdpa"


def test_varlen_attention_keeps_samples_apart(tiny_model_dir):
    """Attention over a packed row equals attention over each sample alone, and differs from plain causal."""
    torch.manual_seed(0)
    m = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    base = m.model
    assert base.config._attn_implementation == _packing.VARLEN_ATTENTION
    a, b = torch.randint(3, 200, (1, 6)), torch.randint(3, 200, (1, 9))
    with torch.no_grad():
        alone = torch.cat([base(a, use_cache=False).logits, base(b, use_cache=False).logits], dim=1)
        ids = torch.cat([a, b], dim=1)
        pos = torch.cat([torch.arange(6), torch.arange(9)])[None]
        by_pos = base(ids, position_ids=pos, use_cache=False).logits  # boundaries found from position_ids
        cu = torch.tensor([0, 6, 15], dtype=torch.int32)
        by_cu = base(ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=9, max_length_k=9,
                     use_cache=False).logits
        one_seq = base(ids, position_ids=torch.arange(15)[None], use_cache=False).logits
    assert torch.allclose(by_pos, alone, atol=1e-5)
    assert torch.allclose(by_cu, alone, atol=1e-5)
    assert not torch.allclose(one_seq[:, 6:], alone[:, 6:], atol=1e-3)  # the check can fail


def test_pack_refuses_masks_with_holes_and_rows_stay_apart():
    batch = ragged_batch([3, 4])
    holes = dict(batch, attention_mask=torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]]))
    assert _packing.pack(holes) is None
    packed = _packing.pack(batch)
    assert packed.batch["input_ids"].shape == (1, 7)
    assert packed.batch["cu_seq_lens_q"].tolist() == [0, 3, 7]
    assert packed.batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert packed.batch["num_rows"] == 2
    assert torch.equal(packed.unpack(packed.batch["input_ids"].unsqueeze(-1)).squeeze(-1), batch["input_ids"])


def test_full_model_checkpoint_does_not_name_the_private_attention(tiny_model_dir, tmp_path):
    """A saved full model loads anywhere: config.json must not ask for 'twinkle_varlen'."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    path = m.save("full", output_dir=str(tmp_path))
    assert _packing.VARLEN_ATTENTION not in json.dumps(json.loads((tmp_path / "full" / "config.json").read_text()))
    AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.slow
def test_throughput_bench_runs_both_sides_to_the_same_losses(tmp_path):
    """bench/throughput.py end to end on the tiny model (few steps): it must run and both sides must agree."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--preset", "tiny", "--steps", "2", "--max-len", "128"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(baseline|ours)\s.*\s(\S+)$", proc.stdout, re.M)}
    assert set(rows) == {"baseline", "ours"}, proc.stdout
    assert rows["ours"] < 1e-4  # max |loss difference| of ours against the hand loop, per step
    assert "ours/baseline trained tokens/s" in proc.stdout


def test_vision_language_models_stay_padded():
    """Their masks can hold bidirectional image blocks, which per-sample causal attention would drop."""
    from types import SimpleNamespace

    config = SimpleNamespace(sub_configs={"text_config": object, "vision_config": object}, _attn_implementation="sdpa")
    assert _packing.enable(SimpleNamespace(config=config)) is False
    assert config._attn_implementation == "sdpa"
