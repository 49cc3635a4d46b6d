from __future__ import annotations

import torch

from twinkle.advantage.base import Advantage

__all__ = ["RLOOAdvantage"]


class RLOOAdvantage(Advantage):
    """REINFORCE leave-one-out: ``r_i - (sum(group) - r_i) / (G - 1)``, the mean of the *other* samples as the
    baseline, then scaled like ``GRPOAdvantage`` (``'group'``: ÷ group std + 1e-8; ``'batch'``: ÷ batch std
    + 1e-8; ``'none'``: unscaled, the plain RLOO estimator of TRL's ``RLOOTrainer``).

    Returns:
        A 1-D float32 tensor, one advantage per reward.

    Raises:
        ValueError: ``Invalid num_generations`` when G <= 1 (leave-one-out needs at least two samples per prompt)
            or G does not divide the number of rewards; ``Invalid scale``.
    """

    min_generations = 2

    def compute(self, grouped: torch.Tensor, scale: str) -> torch.Tensor:
        g = grouped.shape[1]
        baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (g - 1)
        return self._scale(grouped - baseline, grouped, scale)
