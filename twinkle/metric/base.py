"""The ``Metric`` interface: accumulate per micro-batch, ``calculate()`` once per report.

The model feeds every metric the same keyword facts and each one takes what it needs:
``loss`` (float, the loss value as returned by the loss), ``num_tokens`` (int, >0 for sum-reduced losses),
``grad_norm`` (float), ``lr`` (float), ``cur_step`` (micro-batches seen), ``gradient_accumulation_steps``.
``inputs``/``outputs`` are the collated batch and the model outputs (``logits`` included while they exist).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Metric"]


class Metric:
    """Base class of training and evaluation metrics.

    Args:
        device_mesh: the model's mesh (kept for metrics that need its layout).
        process_group: the group whose ranks' partial sums ``calculate`` adds up; ``None`` is the default group
            when ``torch.distributed`` is initialised, else no reduction.
    """

    def __init__(self, device_mesh: Any = None, process_group: Any = None, **kwargs: Any) -> None:
        self.device_mesh = device_mesh
        self.process_group = process_group
        self.reset()

    def accumulate(self, inputs: Any, outputs: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def calculate(self) -> dict[str, Any]:
        """Return the metric values (strings; upstream's policy metrics give floats), reduced across ranks, and
        reset the accumulators."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def _all_reduce_sum(self, values: list[float]) -> list[float]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(self.process_group) == 1:
            return values
        device = torch.device("cpu")
        if dist.get_backend(self.process_group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, group=self.process_group)
        return t.tolist()


def fmt(value: float) -> str:
    """Seven significant digits: enough to compare runs, short enough to print."""
    return f"{value:.7g}"
