"""GRPOLoss: hand-computed values from the contract's formulas, its edge cases, and one real training step."""

from __future__ import annotations

import math

import pytest
import torch

from twinkle.loss import GRPOLoss
from twinkle.metric import CompletionRewardMetric, GRPOMetric

# two rows, four positions; row 0 labels the first two positions, row 1 the last three
LABELS = torch.tensor([[5, 6, -100, -100], [-100, 7, 8, 9]])
LOGPS = torch.tensor([[-1.0, -0.5, 0.0, 0.0], [0.0, -1.0, -0.2, -0.3]])
# old = logp - log(r): row 0 ratios [1.5, 0.5], row 1 ratios [0.5, 1.5, 1.0]; unlabelled positions hold junk
OLD = LOGPS - torch.log(torch.tensor([[1.5, 0.5, 1.0, 1.0], [1.0, 0.5, 1.5, 1.0]]))
OLD[0, 3] = 123.0
ADV = [1.0, -1.0]


def call(loss: GRPOLoss, logps: torch.Tensor = LOGPS, labels: torch.Tensor = LABELS, **kw):
    outputs = {"logps": logps.clone().requires_grad_(True)}
    outputs.update(kw.pop("extra_outputs", {}))
    result = loss({"labels": labels}, outputs, **kw)
    return result, outputs


def test_clipped_objective_by_hand():
    # row 0 (A=+1): r=1.5 -> -min(1.5, 1.2) = -1.2; r=0.5 -> -min(0.5, 0.8) = -0.5; mean -0.85
    # row 1 (A=-1): r=0.5 -> -min(-0.5, -0.8) = 0.8; r=1.5 -> -min(-1.5, -1.2) = 1.5; r=1 -> 1.0; mean 1.1
    result, outputs = call(GRPOLoss(), old_logps=OLD, advantages=ADV)
    assert result["num_tokens"] == 0
    assert result["loss"].item() == pytest.approx((-0.85 + 1.1) / 2, abs=1e-6)
    stats = outputs["grpo_stats"]
    # clipped: row 0 token 0 (r > 1.2, A > 0) and row 1 token 0 (r < 0.8, A < 0)
    assert stats["clipped"].item() == 2 and stats["tokens"].item() == 5


def test_epsilon_high_widens_the_upper_clip_only():
    # row 0 token 0: -min(1.5, min(1.5, 1.6)) = -1.5 -> row 0 mean -1.0; row 1 unchanged 1.1
    result, _ = call(GRPOLoss(epsilon=0.2, epsilon_high=0.6), old_logps=OLD, advantages=ADV)
    assert result["loss"].item() == pytest.approx((-1.0 + 1.1) / 2, abs=1e-6)


def test_without_old_logps_the_ratio_is_one_and_the_gradient_is_minus_a_over_tokens():
    result, outputs = call(GRPOLoss(), advantages=ADV)
    assert result["loss"].item() == pytest.approx((-1.0 + 1.0) / 2, abs=1e-7)
    result["loss"].backward()
    # d loss / d logp = -A_i / (n_i * batch) on labelled tokens, 0 elsewhere
    expected = torch.tensor([[-1 / 4, -1 / 4, 0, 0], [0, 1 / 6, 1 / 6, 1 / 6]])
    assert torch.allclose(outputs["logps"].grad, expected, atol=1e-7)
    assert outputs["grpo_stats"]["approx_kl"].item() == 0.0


def test_no_advantages_gives_zero_with_a_graph():
    result, outputs = call(GRPOLoss(), old_logps=OLD)
    assert result["loss"].item() == 0.0
    result["loss"].backward()
    assert torch.equal(outputs["logps"].grad, torch.zeros_like(LOGPS))


def test_k3_kl_term_with_beta():
    labels = torch.tensor([[1]])
    # on-policy, A = 2: -2; ref - logp = -1 -> k3 = e^-1 + 1 - 1; beta 0.1
    result, outputs = call(GRPOLoss(beta=0.1), logps=torch.tensor([[-1.0]]), labels=labels,
                           advantages=[2.0], ref_logps=torch.tensor([[-2.0]]))
    assert result["loss"].item() == pytest.approx(-2.0 + 0.1 * math.exp(-1), abs=1e-6)
    assert outputs["grpo_stats"]["ref_kl"].item() == pytest.approx(math.exp(-1), abs=1e-6)
    # the same through ref_outputs
    result2, _ = call(GRPOLoss(beta=0.1), logps=torch.tensor([[-1.0]]), labels=labels,
                      advantages=[2.0], ref_outputs={"logps": torch.tensor([[-2.0]])})
    assert result2["loss"].item() == pytest.approx(result["loss"].item())
    with pytest.raises(ValueError, match="ref_logps"):
        call(GRPOLoss(beta=0.1), advantages=ADV)
    # beta = 0 ignores a reference
    result3, _ = call(GRPOLoss(), logps=torch.tensor([[-1.0]]), labels=labels, advantages=[2.0],
                      ref_logps=torch.tensor([[-50.0]]))
    assert result3["loss"].item() == pytest.approx(-2.0)


def test_entropy_bonus_and_require_entropy():
    assert GRPOLoss().require_entropy is False and GRPOLoss(entropy_coef=0.5).require_entropy is True
    entropy = torch.tensor([[2.0, 4.0, 9.0, 9.0], [9.0, 1.0, 1.0, 1.0]])
    result, _ = call(GRPOLoss(entropy_coef=0.5), advantages=ADV, extra_outputs={"entropy": entropy})
    # on-policy part 0; entropy part -0.5 * mean(row means [3, 1]) = -1
    assert result["loss"].item() == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(KeyError, match="require_entropy"):
        call(GRPOLoss(entropy_coef=0.5), advantages=ADV)


def test_ragged_rows_scatter_onto_the_label_mask():
    ragged_old = [OLD[0, :2].tolist(), OLD[1, 1:].tolist()]  # one value per labelled token
    ragged_adv = [[1.0, 1.0], torch.tensor([-1.0, -1.0, -1.0])]
    dense, _ = call(GRPOLoss(), old_logps=OLD, advantages=torch.tensor(ADV))
    ragged, _ = call(GRPOLoss(), old_logps=ragged_old, advantages=ragged_adv)
    assert ragged["loss"].item() == pytest.approx(dense["loss"].item(), abs=1e-6)
    with pytest.raises(ValueError, match="labelled tokens"):
        call(GRPOLoss(), old_logps=[[0.0], [0.0, 0.0, 0.0]], advantages=ADV)
    # logps of the same rows padded wider (zeros on the right) are cropped back onto the labels
    wide = torch.cat([OLD * (LABELS != -100), torch.zeros(2, 3)], dim=1)
    cropped, _ = call(GRPOLoss(), old_logps=wide, advantages=ADV)
    assert cropped["loss"].item() == pytest.approx(dense["loss"].item(), abs=1e-6)
    with pytest.raises(ValueError, match="expected"):
        call(GRPOLoss(), old_logps=OLD, advantages=[1.0, 2.0, 3.0])


def test_log_ratio_is_clamped_to_20():
    # logp - old = 100 -> r = e^20; A = -1 -> -min(-e^20, -1.2) = e^20
    result, _ = call(GRPOLoss(), logps=torch.tensor([[-1.0]]), labels=torch.tensor([[1]]),
                     old_logps=torch.tensor([[-101.0]]), advantages=[-1.0])
    assert math.isfinite(result["loss"].item())
    assert result["loss"].item() == pytest.approx(math.exp(20), rel=1e-5)


def test_a_row_without_labelled_tokens_counts_as_zero():
    labels = torch.tensor([[1, 2], [-100, -100]])
    result, _ = call(GRPOLoss(), logps=torch.zeros(2, 2), labels=labels, advantages=[1.0, 5.0])
    assert result["loss"].item() == pytest.approx(-1.0 / 2)


def k3(r: float) -> float:
    """KL(old || new) k3 estimate for one token with ratio r = p_new / p_old: 1/r + log r - 1."""
    return 1 / r + math.log(r) - 1


def test_grpo_metric_is_token_weighted_and_reads_entropy_or_logits():
    metric = GRPOMetric()
    entropy = torch.tensor([[2.0, 4.0, 9.0, 9.0], [9.0, 1.0, 1.0, 1.0]])
    loss = GRPOLoss(entropy_coef=0.5)
    _, outputs = call(loss, old_logps=OLD, advantages=ADV, extra_outputs={"entropy": entropy})
    metric.accumulate({"labels": LABELS}, outputs)
    # a second micro-batch without entropy: 1 token, uniform logits over 4 -> entropy log 4; ratio e^0.1 A=+1
    labels = torch.tensor([[1, -100]])
    _, outputs2 = call(GRPOLoss(), logps=torch.tensor([[-1.0, 0.0]]), labels=labels,
                       old_logps=torch.tensor([[-1.1, 0.0]]), advantages=[1.0],
                       extra_outputs={"logits": torch.zeros(1, 2, 4)})
    metric.accumulate({"labels": labels}, outputs2)
    metric.accumulate(None, None, loss=1.0)  # the model's other facts are ignored
    values = metric.calculate()
    assert all(isinstance(v, str) for v in values.values())
    kl = (2 * k3(1.5) + 2 * k3(0.5) + k3(1.0) + k3(math.exp(0.1))) / 6
    assert float(values["train/approx_kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(values["train/clip_ratio"]) == pytest.approx(2 / 6, rel=1e-6)
    assert float(values["train/entropy"]) == pytest.approx((2 + 4 + 1 + 1 + 1 + math.log(4)) / 6, rel=1e-6)
    assert "train/ref_kl" not in values
    assert metric.calculate() == {}  # calculate resets


def test_completion_reward_metric():
    metric = CompletionRewardMetric(rewards={"accuracy": [1.0, 0.0, 1.0], "format": [1.0, 1.0, 1.0]},
                                    completion_lengths=[10, 20, 30])
    metric.accumulate(None, None, rewards={"accuracy": torch.tensor([0.0])}, completion_lengths=[40])
    values = metric.calculate()
    assert values == {
        "train/accuracy_reward": "0.5",
        "train/accuracy_reward_std": f"{math.sqrt(1 / 3):.7g}",  # unbiased std of [1, 0, 1, 0]
        "train/format_reward": "1",
        "train/format_reward_std": "0",
        "train/completion_length": "25",
    }
    assert metric.calculate() == {}
    # lengths from a collated batch's labels when not given
    metric.accumulate({"labels": LABELS}, None, rewards={"r": [2.0, 4.0]})
    assert metric.calculate() == {"train/r_reward": "3", "train/r_reward_std": f"{math.sqrt(2):.7g}",
                                  "train/completion_length": "2.5"}
    with pytest.raises(TypeError, match="dict"):
        metric.accumulate(None, None, rewards=[1.0])


def make_batch(rows: int = 4, seq: int = 10, vocab: int = 200) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (rows, seq), generator=g)
    labels = ids.roll(-1, dims=1)
    labels[:, :3] = -100
    labels[:, -1] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(seq).expand(rows, seq).clone(), "labels": labels}


def test_one_grpo_step_moves_positive_advantage_logps_up(tiny_model_dir):
    from twinkle.model import TransformersModel

    torch.manual_seed(0)
    model = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    model.set_loss("GRPOLoss", epsilon=0.2, beta=0.0)
    model.add_metric("GRPOMetric", is_training=True)
    model.set_optimizer("AdamW", lr=1e-3, weight_decay=0.0)
    batch = make_batch()
    mask = batch["labels"] != -100

    def seq_logps() -> torch.Tensor:
        return (model.forward_only(inputs=batch)["logps"] * mask).sum(-1)

    before = seq_logps()
    old = model.forward_only(inputs=batch)["logps"]
    advantages = [1.0, -1.0, 1.0, -1.0]
    out = model.forward_backward(inputs=batch, advantages=advantages, old_logps=old)
    assert float(out["loss"]) == pytest.approx(0.0, abs=1e-5)  # on-policy: mean of -A
    model.clip_grad_and_step(max_grad_norm=1.0)
    metrics = model.calculate_metric(is_training=True)
    assert float(metrics["train/approx_kl"]) == pytest.approx(0.0, abs=1e-5)  # old == current before the step
    assert float(metrics["train/clip_ratio"]) == 0.0
    assert 0 < float(metrics["train/entropy"]) <= math.log(model.model.config.vocab_size) + 1e-4
    after = seq_logps()
    delta = after - before
    assert (delta[[0, 2]] > 0).all(), delta
    assert (delta[[1, 3]] < 0).all(), delta
