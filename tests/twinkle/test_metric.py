import pytest
import torch

from twinkle.metric import Accuracy, LossMetric, Metric, TrainMetric


def test_loss_metric_divides_sum_losses_by_tokens_and_resets():
    m = LossMetric()
    m.accumulate(None, None, loss=6.0, num_tokens=3)
    m.accumulate(None, None, loss=4.0, num_tokens=1)
    m.accumulate(None, None, grad_norm=0.5)
    out = m.calculate()
    assert float(out["loss"]) == pytest.approx(10.0 / 4)
    assert float(out["grad_norm"]) == pytest.approx(0.5)
    assert m.calculate() == {}  # reset after calculate


def test_loss_metric_averages_mean_losses():
    m = LossMetric()
    for v in (1.0, 2.0, 6.0):
        m.accumulate(None, None, loss=v, num_tokens=0)
    assert float(m.calculate()["loss"]) == pytest.approx(3.0)


def test_accuracy_counts_labelled_argmax_hits():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 2, 0] = logits[0, 3, 1] = 1.0
    labels = torch.tensor([[1, 0, 0, -100]])
    m = Accuracy()
    m.accumulate({"labels": labels}, {"logits": logits})
    m.accumulate({"labels": labels}, {})  # no logits: skipped
    out = m.calculate()
    assert out == {"accuracy": "0.6666667", "correct_tokens": "2", "total_tokens": "3"}


def test_train_metric_reports_iters_lr_speed():
    m = TrainMetric()
    m.accumulate(None, None, cur_step=6, gradient_accumulation_steps=2)
    m.accumulate(None, None, lr=1e-4)
    out = m.calculate()
    assert out["iters"] == "3" and float(out["lr"]) == pytest.approx(1e-4) and float(out["speed"]) > 0
    out = m.calculate()
    assert out["iters"] == "3" and float(out["speed"]) == 0.0  # no new steps since the last report


def test_values_are_strings_and_base_is_abstract():
    m = LossMetric()
    m.accumulate(None, None, loss=1.0, num_tokens=1)
    assert all(isinstance(v, str) for v in m.calculate().values())
    with pytest.raises(NotImplementedError):
        Metric()
