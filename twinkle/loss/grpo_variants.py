"""GRPO's variants: the same inputs and keywords as ``GRPOLoss``, a different per-token loss or aggregation.

With ``d = clamp(logp - old, ±20)``, ``r = e^d``, ``A`` the advantage and ``m`` the label mask:

* ``GSPOLoss``: one ratio per sequence, ``r = exp(sum(m d) / max(sum(m), 1))``, clipped like GRPO.
* ``SAPOLoss``: ``L_t = -(4/τ) σ(τ (r - 1)) A`` with ``τ = tau_pos`` where ``A > 0``, else ``tau_neg``.
* ``CISPOLoss``: ``L_t = -sg[min(r, 1 + ε_high)] A logp``, aggregated ``sum(m L) / N`` with ``N`` the
  ``num_items_in_batch`` keyword, else ``sum(m)``.
* ``BNPOLoss``: ``sum(m L) / max(sum(m), 1)`` over the whole batch.
* ``DRGRPOLoss``: ``sum(m L) / (B * max_completion_length)``.

The KL (``beta``) and entropy (``entropy_coef``) terms are added per token before aggregating, as in GRPOLoss.
"""

from __future__ import annotations

import torch

from twinkle.loss.grpo import GRPOLoss

__all__ = ["BNPOLoss", "CISPOLoss", "DRGRPOLoss", "GSPOLoss", "SAPOLoss"]


class GSPOLoss(GRPOLoss):
    """Group Sequence Policy Optimization: the importance ratio is the sequence's geometric mean."""

    def _policy_loss(self, logps, log_ratio, adv, mask):
        seq_log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        ratio = torch.exp(seq_log_ratio).expand_as(log_ratio)
        clipped = ratio.clamp(1.0 - self.epsilon, 1.0 + self.epsilon_high)
        return -torch.min(ratio * adv, clipped * adv), ratio


class SAPOLoss(GRPOLoss):
    """Soft Adaptive Policy Optimization: a sigmoid gate instead of a hard clip.

    Args:
        tau_pos / tau_neg: the gate's temperature for positive / non-positive advantages.
    """

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
                 entropy_coef: float = 0.0, ignore_index: int = -100, tau_pos: float = 1.0,
                 tau_neg: float = 1.0) -> None:
        super().__init__(epsilon, epsilon_high, beta, entropy_coef, ignore_index)
        if tau_pos <= 0 or tau_neg <= 0:
            raise ValueError(f"tau_pos and tau_neg must be > 0, got {tau_pos}, {tau_neg}")
        self.tau_pos, self.tau_neg = float(tau_pos), float(tau_neg)

    def _policy_loss(self, logps, log_ratio, adv, mask):
        ratio = torch.exp(log_ratio)
        tau = torch.where(adv > 0, torch.full_like(adv, self.tau_pos), torch.full_like(adv, self.tau_neg))
        return -(4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0)) * adv, ratio


class CISPOLoss(GRPOLoss):
    """Clipped IS-weight Policy Optimization: a detached, upper-truncated ratio weights ``A * logp``.

    The truncation is at ``1 + epsilon_high`` (``epsilon_high`` defaults to ``epsilon``, so by default
    ``1 + ε``).
    """

    def _policy_loss(self, logps, log_ratio, adv, mask):
        ratio = torch.exp(log_ratio)
        weight = ratio.clamp(max=1.0 + self.epsilon_high).detach()
        return -weight * adv * logps, ratio

    def _aggregate(self, per_token, mask, kwargs) -> torch.Tensor:
        n = kwargs.get("num_items_in_batch")
        denominator = mask.sum() if n is None else torch.as_tensor(float(n), device=mask.device)
        return (per_token * mask).sum() / denominator


class BNPOLoss(GRPOLoss):
    """Batch-normalised: one token mean over the whole batch (longer sequences weigh more)."""

    def _aggregate(self, per_token, mask, kwargs) -> torch.Tensor:
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


class DRGRPOLoss(GRPOLoss):
    """Dr. GRPO: divide by a constant ``B * max_completion_length`` (no length bias).

    Args:
        max_completion_length: the generation budget the constant uses.
    """

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
                 entropy_coef: float = 0.0, ignore_index: int = -100, max_completion_length: int = 1024) -> None:
        super().__init__(epsilon, epsilon_high, beta, entropy_coef, ignore_index)
        if max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
        self.max_completion_length = int(max_completion_length)

    def _aggregate(self, per_token, mask, kwargs) -> torch.Tensor:
        return (per_token * mask).sum() / (mask.shape[0] * self.max_completion_length)
