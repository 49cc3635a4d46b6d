"""On a CUDA device (skipped elsewhere): the model is placed on the GPU, trains in bf16, and its LoRA moves.

Run on a GPU machine with ``scripts/test.sh -m gpu``."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from tests.twinkle.test_model import make_batch
from twinkle.model import TransformersModel

pytestmark = pytest.mark.gpu


def test_lora_training_on_cuda_in_bf16_lowers_the_loss_on_a_repeated_batch(tiny_model_dir):
    torch.manual_seed(0)
    model = TransformersModel(model_id=str(tiny_model_dir), mixed_precision="bf16")
    model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
    model.set_optimizer(optimizer_cls="AdamW", lr=1e-2)
    first = next(p for name, p in model.model.named_parameters() if "lora_B" in name)
    assert first.device.type == "cuda"
    before = first.detach().clone()
    batch = make_batch(seq=32)
    losses = []
    for _ in range(8):
        losses.append(float(model.forward_backward(inputs=batch)["loss"]))
        model.clip_grad_and_step()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, first.detach())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_packed_rows_on_cuda_give_the_padded_per_row_losses(tiny_model_dir, precision):
    """Padding-free training on a GPU (per-sample SDPA kernels): the padded run's per-row losses.

    float32 to 1e-5 as on the CPU; bf16 to 2e-2 (the kernels differ between one padded call and per-sample calls,
    so bf16 rounding differs, not the maths)."""
    from tests.twinkle.test_packing import LENGTHS, ragged_batch, row_losses

    batch = ragged_batch()
    results = []
    for padding_free in (False, True):
        torch.manual_seed(0)
        model = TransformersModel(
            model_id=str(tiny_model_dir), mixed_precision=precision, padding_free=padding_free,
            gradient_checkpointing=False,
        )
        torch.manual_seed(1)
        model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
        model.set_optimizer(optimizer_cls="AdamW", lr=1e-2)
        out = model.forward_backward(inputs=batch)
        results.append(row_losses(out["logps"].float().cpu(), batch["labels"]))
    assert len(results[1]) == len(LENGTHS)
    tolerance = 1e-5 if precision == "no" else 2e-2
    assert torch.allclose(results[1], results[0], atol=tolerance, rtol=0), results
