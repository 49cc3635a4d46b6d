"""Advantages: hand-computed values for GRPO and RLOO, every scale and the edge cases of the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twinkle.advantage import GRPOAdvantage, RLOOAdvantage

R = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0]  # two prompts, G = 3: groups [1, 0, 0] and [1, 2, 0]


def test_grpo_group_scale_by_hand():
    # group 1: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    # group 2: mean 1, std sqrt((0 + 1 + 1) / 2) = 1
    s1 = math.sqrt(1 / 3) + 1e-8
    expected = [(2 / 3) / s1, (-1 / 3) / s1, (-1 / 3) / s1, 0.0, 1 / (1 + 1e-8), -1 / (1 + 1e-8)]
    adv = GRPOAdvantage()(R, num_generations=3)
    assert isinstance(adv, torch.Tensor) and adv.dtype == torch.float32 and adv.shape == (6,)
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)


def test_grpo_batch_and_none_scales():
    centered = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 1.0, -1.0])
    batch_std = float(np.std(R, ddof=1))
    adv = GRPOAdvantage()(R, num_generations=3, scale="batch")
    assert torch.allclose(adv, centered / (batch_std + 1e-8), atol=1e-6)
    assert torch.allclose(GRPOAdvantage()(R, num_generations=3, scale="none"), centered, atol=1e-6)


def test_grpo_equal_rewards_give_zero_and_inputs_of_every_kind():
    assert torch.equal(GRPOAdvantage()([1.0, 1.0, 0.5, 0.5], num_generations=2), torch.zeros(4))
    as_list = GRPOAdvantage()(R, num_generations=3)
    assert torch.equal(GRPOAdvantage()(np.array(R), num_generations=3), as_list)
    assert torch.equal(GRPOAdvantage()(torch.tensor(R, dtype=torch.float64), num_generations=3), as_list)
    assert torch.equal(GRPOAdvantage()(tuple(R), num_generations=3), as_list)
    assert torch.equal(GRPOAdvantage()(R, num_generations=np.int64(3)), as_list)


def test_grpo_single_generation_with_group_scale_returns_rewards_unchanged():
    adv = GRPOAdvantage()([0.3, -1.0, 2.0], num_generations=1, scale="group")
    assert torch.equal(adv, torch.tensor([0.3, -1.0, 2.0]))
    assert torch.equal(GRPOAdvantage()([0.3, -1.0], num_generations=1, scale="none"), torch.zeros(2))


@pytest.mark.parametrize("g", [0, -1, 4, 2.0, None, True])
def test_invalid_num_generations_raise(g):
    with pytest.raises(ValueError, match="Invalid"):
        GRPOAdvantage()(R, num_generations=g)


def test_invalid_scale_raises():
    with pytest.raises(ValueError, match="Invalid scale"):
        GRPOAdvantage()(R, num_generations=3, scale="std")


def test_rloo_by_hand():
    # group [1, 0, 0]: baselines [0, 0.5, 0.5] -> [1, -0.5, -0.5]; group [1, 2, 0]: [1, 0.5, 1.5] -> [0, 1.5, -1.5]
    raw = torch.tensor([1.0, -0.5, -0.5, 0.0, 1.5, -1.5])
    assert torch.allclose(RLOOAdvantage()(R, num_generations=3, scale="none"), raw)
    s1, s2 = math.sqrt(1 / 3) + 1e-8, 1 + 1e-8
    expected = raw / torch.tensor([s1, s1, s1, s2, s2, s2])
    assert torch.allclose(RLOOAdvantage()(R, num_generations=3), expected, atol=1e-6)
    batch = raw / (float(np.std(R, ddof=1)) + 1e-8)
    assert torch.allclose(RLOOAdvantage()(R, num_generations=3, scale="batch"), batch, atol=1e-6)


@pytest.mark.parametrize("g", [1, 0])
def test_rloo_needs_two_generations(g):
    with pytest.raises(ValueError, match="Invalid num_generations"):
        RLOOAdvantage()([1.0, 0.0], num_generations=g)
