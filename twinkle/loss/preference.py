"""Reference-free preference losses on interleaved ``[c1, r1, c2, r2, ...]`` rows: SimPO, CPO, ORPO.

Notation (``m`` = ``labels != ignore_index``): ``S = sum(m * logp)`` per row, ``A = S / max(sum(m), 1)``, and
``NLL_c`` the token mean of ``-logp`` over all chosen tokens. Each loss is a mean over pairs (``num_tokens=0``)
and ignores reference keywords. ``dpo_full.py`` builds them as ``SimPOLoss(beta=b, gamma=0.5)``,
``ORPOLoss(lambda_orpo=b)`` and ``CPOLoss(beta=b, bc_coef=1.0)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from twinkle.loss.base import Loss, get_logps, pair_check

__all__ = ["CPOLoss", "ORPOLoss", "SimPOLoss"]


def _pair_terms(inputs: dict[str, Any], outputs: dict[str, Any], ignore_index: int, name: str):
    labels = inputs["labels"]
    pair_check(labels.shape[0], name)
    logps = get_logps(inputs, outputs, ignore_index).float()
    mask = (labels.to(logps.device) != ignore_index).float()
    sums = (logps * mask).sum(-1)
    means = sums / mask.sum(-1).clamp(min=1)
    chosen_mask = mask[0::2]
    nll_chosen = -(logps[0::2] * chosen_mask).sum() / chosen_mask.sum().clamp(min=1)
    return sums, means, nll_chosen


class SimPOLoss(Loss):
    """SimPO: ``-log sigmoid(beta (A_c - A_r) - gamma)`` on length-normalised log-probabilities, mean over pairs."""

    def __init__(self, beta: float = 2.5, gamma: float = 0.5, ignore_index: int = -100) -> None:
        self.beta, self.gamma, self.ignore_index = float(beta), float(gamma), ignore_index

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        _, means, _ = _pair_terms(inputs, outputs, self.ignore_index, "SimPOLoss")
        losses = -F.logsigmoid(self.beta * (means[0::2] - means[1::2]) - self.gamma)
        return {"loss": losses.mean(), "num_tokens": 0}


class CPOLoss(Loss):
    """CPO: ``-log sigmoid(beta (S_c - S_r)) + bc_coef * NLL_c``, mean over pairs."""

    def __init__(self, beta: float = 0.1, bc_coef: float = 1.0, ignore_index: int = -100) -> None:
        self.beta, self.bc_coef, self.ignore_index = float(beta), float(bc_coef), ignore_index

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        sums, _, nll_chosen = _pair_terms(inputs, outputs, self.ignore_index, "CPOLoss")
        losses = -F.logsigmoid(self.beta * (sums[0::2] - sums[1::2]))
        return {"loss": losses.mean() + self.bc_coef * nll_chosen, "num_tokens": 0}


def _log1m_exp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - e^a)`` for ``a < 0``, stable on both sides of ``-ln 2`` (Mächler's rule)."""
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


class ORPOLoss(Loss):
    """ORPO: ``NLL_c + lambda * [-log sigmoid(lo_c - lo_r)]`` with the log-odds ``lo = A - log(1 - e^A)``,
    ``A <= -1e-7``."""

    def __init__(self, lambda_orpo: float = 0.1, ignore_index: int = -100) -> None:
        self.lambda_orpo, self.ignore_index = float(lambda_orpo), ignore_index

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        _, means, nll_chosen = _pair_terms(inputs, outputs, self.ignore_index, "ORPOLoss")
        a = means.clamp(max=-1e-7)
        log_odds = a - _log1m_exp(a)
        ratio = -F.logsigmoid(log_odds[0::2] - log_odds[1::2])
        return {"loss": nll_chosen + self.lambda_orpo * ratio.mean(), "num_tokens": 0}
