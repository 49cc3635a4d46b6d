import math

import pytest
import torch

from twinkle.module.scheduler import CosineWarmupScheduler, LinearWarmupScheduler


def _lrs(cls, steps, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = cls(opt, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_warmup_formula():
    w, t = 4, 14
    lrs = _lrs(CosineWarmupScheduler, t + 2, num_warmup_steps=w, num_training_steps=t)
    for s, lr in enumerate(lrs):
        factor = s / w if s < w else max(0.0, 0.5 * (1 + math.cos(2 * math.pi * 0.5 * (s - w) / (t - w))))
        assert lr == pytest.approx(2.0 * factor, abs=1e-12), s
    assert lrs[w] == pytest.approx(2.0) and lrs[t] == pytest.approx(0.0, abs=1e-12)


def test_cosine_num_cycles_goes_back_up():
    lrs = _lrs(CosineWarmupScheduler, 11, num_warmup_steps=0, num_training_steps=10, num_cycles=1.0)
    assert lrs[5] == pytest.approx(0.0, abs=1e-12) and lrs[10] == pytest.approx(2.0)


def test_linear_warmup_formula():
    w, t = 2, 10
    lrs = _lrs(LinearWarmupScheduler, t + 2, num_warmup_steps=w, num_training_steps=t)
    for s, lr in enumerate(lrs):
        factor = s / w if s < w else max(0.0, (t - s) / (t - w))
        assert lr == pytest.approx(2.0 * factor), s


def test_negative_steps_rejected():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        CosineWarmupScheduler(opt, num_warmup_steps=-1, num_training_steps=3)


def test_state_dict_round_trip():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    a = CosineWarmupScheduler(opt, num_warmup_steps=2, num_training_steps=8)
    for _ in range(5):
        opt.step()
        a.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    b = CosineWarmupScheduler(opt2, num_warmup_steps=2, num_training_steps=8)
    b.load_state_dict(a.state_dict())
    opt2.param_groups[0]["lr"] = b.get_last_lr()[0]
    a.step(), b.step()
    assert a.get_last_lr() == pytest.approx(b.get_last_lr())
