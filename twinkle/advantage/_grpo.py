from __future__ import annotations

import torch

from twinkle.advantage.base import Advantage

__all__ = ["GRPOAdvantage"]


class GRPOAdvantage(Advantage):
    """Group-relative advantage: ``r - mean(group)``, then divided by a std (unbiased, ``+ 1e-8``).

    Args (of the call):
        rewards: ``num_generations`` consecutive rewards per prompt (list, array or tensor).
        num_generations: G, the samples per prompt.
        scale: ``'group'`` divides by each group's std (GRPO); ``'batch'`` by the std of all rewards (TRL's
            ``scale_rewards='batch'``); ``'none'`` leaves ``r - mean`` (Dr. GRPO).

    Returns:
        A 1-D float32 tensor, one advantage per reward.

    Edge cases:
        * ``num_generations == 1`` with ``scale='group'`` returns the rewards unchanged (a group of one has no
          mean to compare with, so the raw reward is the signal). With ``'batch'`` or ``'none'`` the formula
          applies and every advantage is 0.
        * A group whose rewards are all equal gets advantage 0 (its std is 0, hence the ``+ 1e-8``).

    Raises:
        ValueError: ``Invalid num_generations`` (not an int >= 1, or not dividing the number of rewards) or
            ``Invalid scale``.
    """

    def compute(self, grouped: torch.Tensor, scale: str) -> torch.Tensor:
        if grouped.shape[1] == 1 and scale == "group":
            return grouped.clone()
        centered = grouped - grouped.mean(dim=1, keepdim=True)
        return self._scale(centered, grouped, scale)
