from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check(num_warmup_steps: int, num_training_steps: int) -> None:
    if num_warmup_steps < 0 or num_training_steps < 0:
        raise ValueError(
            f"num_warmup_steps ({num_warmup_steps}) and num_training_steps ({num_training_steps}) must be >= 0"
        )


class CosineWarmupScheduler(LambdaLR):
    """Linear warmup for ``W`` steps, then a cosine decay to 0 at step ``T``.

    The factor is ``s/W`` while ``s < W``, then ``max(0, 0.5 * (1 + cos(2π · num_cycles · (s-W)/(T-W))))``.

    Args:
        optimizer: the wrapped optimizer.
        num_warmup_steps: ``W``.
        num_training_steps: ``T``, the number of optimizer steps of the run.
        num_cycles: 0.5 decays once from the peak to 0.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        num_warmup_steps: int,
        num_training_steps: int,
        num_cycles: float = 0.5,
        last_epoch: int = -1,
    ) -> None:
        _check(num_warmup_steps, num_training_steps)
        self.num_warmup_steps = num_warmup_steps
        self.num_training_steps = num_training_steps
        self.num_cycles = num_cycles
        super().__init__(optimizer, self._factor, last_epoch=last_epoch)

    def _factor(self, step: int) -> float:
        w, t = self.num_warmup_steps, self.num_training_steps
        if step < w:
            return step / max(1, w)
        progress = (step - w) / max(1, t - w)
        return max(0.0, 0.5 * (1.0 + math.cos(2.0 * math.pi * self.num_cycles * progress)))


class LinearWarmupScheduler(LambdaLR):
    """Linear warmup for ``W`` steps, then a linear decay to 0 at step ``T``.

    The factor is ``s/W`` while ``s < W``, then ``max(0, (T-s)/(T-W))``.
    """

    def __init__(
        self, optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1
    ) -> None:
        _check(num_warmup_steps, num_training_steps)
        self.num_warmup_steps = num_warmup_steps
        self.num_training_steps = num_training_steps
        super().__init__(optimizer, self._factor, last_epoch=last_epoch)

    def _factor(self, step: int) -> float:
        w, t = self.num_warmup_steps, self.num_training_steps
        if step < w:
            return step / max(1, w)
        return max(0.0, (t - step) / max(1, t - w))
