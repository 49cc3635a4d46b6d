"""The ``Advantage`` interface: ``advantage(rewards, num_generations=1, scale='group') -> Tensor``.

``rewards`` holds ``num_generations`` consecutive completions per prompt (the order ``sampler.sample`` returns
with ``SamplingParams(num_samples=G)``: prompt 0's G samples, then prompt 1's, ...). It may be a list, a tuple,
a NumPy array or a tensor; the result is always a 1-D float32 tensor of the same length, on the rewards'
device when they were a tensor (CPU otherwise), detached from any graph.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

__all__ = ["SCALES", "Advantage"]

SCALES = ("group", "batch", "none")
EPS = 1e-8


def _is_int(value: Any) -> bool:
    try:
        operator.index(value)  # int, NumPy ints, 0-dim integer tensors; not 2.0
    except TypeError:
        return False
    return True


class Advantage:
    """Base class of the advantage estimators; subclasses implement ``compute(grouped, scale)``."""

    #: the smallest group size the estimator can work with
    min_generations = 1

    def __call__(self, rewards: Any, num_generations: int = 1, scale: str = "group") -> torch.Tensor:
        r = self._as_tensor(rewards)
        self._check(r, num_generations, scale)
        return self.compute(r.view(-1, operator.index(num_generations)), scale).reshape(-1)

    def compute(self, grouped: torch.Tensor, scale: str) -> torch.Tensor:
        """``grouped`` is ``[prompts, num_generations]``; returns advantages of the same shape."""
        raise NotImplementedError

    @staticmethod
    def _as_tensor(rewards: Any) -> torch.Tensor:
        if isinstance(rewards, torch.Tensor):
            return rewards.detach().to(torch.float32).reshape(-1)
        return torch.as_tensor(list(rewards) if not hasattr(rewards, "__array__") else rewards,
                               dtype=torch.float32).reshape(-1)

    def _check(self, r: torch.Tensor, num_generations: Any, scale: str) -> None:
        name = type(self).__name__
        if scale not in SCALES:
            raise ValueError(f"Invalid scale={scale!r} for {name}: use one of {', '.join(map(repr, SCALES))}")
        if isinstance(num_generations, bool) or not _is_int(num_generations) or num_generations < self.min_generations:
            raise ValueError(
                f"Invalid num_generations={num_generations!r} for {name}: it must be an int >= "
                f"{self.min_generations} (the number of samples per prompt, SamplingParams.num_samples)"
            )
        if r.numel() == 0 or r.numel() % num_generations != 0:
            raise ValueError(
                f"Invalid num_generations={num_generations} for {name}: {r.numel()} rewards do not split into "
                f"groups of {num_generations}; pass every sample of every prompt, prompt by prompt"
            )

    @staticmethod
    def _scale(centered: torch.Tensor, grouped: torch.Tensor, scale: str) -> torch.Tensor:
        if scale == "group":
            return centered / (grouped.std(dim=1, keepdim=True) + EPS)
        if scale == "batch":
            # one reward in the whole batch has no spread: treat its std as 0 rather than NaN
            std = grouped.std() if grouped.numel() > 1 else grouped.new_zeros(())
            return centered / (std + EPS)
        return centered

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
