"""Losses on hand-built tensors: labels are pre-rolled, so logits[:, t] predicts labels[:, t]."""

import math

import pytest
import torch

from twinkle.loss import ChunkedCrossEntropyLoss, CrossEntropyLoss, Loss, MSELoss, selective_log_softmax


def _batch(seed=0, b=3, t=7, v=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :2] = -100
    labels[1, 5:] = -100
    return logits, labels


def test_cross_entropy_matches_torch_without_shift():
    logits, labels = _batch()
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    out = CrossEntropyLoss()({"labels": labels}, {"logits": logits})
    assert out["num_tokens"] == 0
    assert torch.allclose(out["loss"].double(), expected, atol=1e-5)


def test_sum_reduction_counts_labelled_tokens_and_uses_logps():
    logits, labels = _batch()
    logps = selective_log_softmax(logits, labels)
    out = CrossEntropyLoss(reduction="sum")({"labels": labels}, {"logps": logps})
    n = int((labels != -100).sum())
    assert out["num_tokens"] == n
    mean = CrossEntropyLoss()({"labels": labels}, {"logps": logps})["loss"]
    assert math.isclose(out["loss"].item() / n, mean.item(), rel_tol=1e-6)


def test_sum_reduction_reports_at_least_one_token():
    labels = torch.full((1, 4), -100)
    out = CrossEntropyLoss(reduction="sum")({"labels": labels}, {"logits": torch.randn(1, 4, 5)})
    assert out["num_tokens"] == 1 and out["loss"].item() == 0.0


def test_dft_weights_each_token_by_its_probability():
    logits, labels = _batch(1)
    logps = selective_log_softmax(logits, labels)
    mask = labels != -100
    expected = (-(logps.exp() * logps))[mask].sum()
    out = CrossEntropyLoss(reduction="sum", dft=True)({"labels": labels}, {"logps": logps})
    assert torch.allclose(out["loss"].double(), expected.double(), atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_equals_plain(chunk, reduction):
    logits, labels = _batch(2)
    logits.requires_grad_(True)
    plain = CrossEntropyLoss(reduction=reduction)({"labels": labels}, {"logits": logits})
    (g_plain,) = torch.autograd.grad(plain["loss"], logits)
    chunked = ChunkedCrossEntropyLoss(chunk_size=chunk, reduction=reduction)({"labels": labels}, {"logits": logits})
    (g_chunked,) = torch.autograd.grad(chunked["loss"], logits)
    assert chunked["num_tokens"] == plain["num_tokens"]
    assert torch.allclose(chunked["loss"], plain["loss"], atol=1e-6)
    assert torch.allclose(g_chunked, g_plain, atol=1e-7)
    assert ChunkedCrossEntropyLoss.require_logits


def test_mse_against_float_labels():
    logits = torch.tensor([[[1.0], [2.0]]])
    labels = torch.tensor([[0.0, 4.0]])
    out = MSELoss()({"labels": labels}, {"logits": logits})
    assert out["loss"].item() == pytest.approx((1 + 4) / 2)
    with pytest.raises(ValueError, match="does not match"):
        MSELoss()({"labels": torch.zeros(1, 3)}, {"logits": logits})


def test_bad_reduction_and_missing_outputs_are_clear():
    with pytest.raises(ValueError, match="reduction must be one of"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(KeyError, match="logps"):
        CrossEntropyLoss()({"labels": torch.zeros(1, 2, dtype=torch.long)}, {})
    with pytest.raises(NotImplementedError):
        Loss()({}, {})
