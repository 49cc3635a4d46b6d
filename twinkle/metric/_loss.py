from __future__ import annotations

from typing import Any

import torch

from twinkle.metric.base import Metric, fmt


class LossMetric(Metric):
    """``loss``: the per-token loss since the last report (sum losses ÷ their tokens, mean losses averaged),
    over all ranks; ``grad_norm``: the last global gradient norm (before clipping)."""

    def reset(self) -> None:
        self._sum = 0.0
        self._tokens = 0.0
        self._mean_sum = 0.0
        self._mean_count = 0.0
        self._grad_norm: float | None = None

    def accumulate(self, inputs: Any, outputs: Any, **kwargs: Any) -> None:
        if kwargs.get("grad_norm") is not None:
            self._grad_norm = kwargs["grad_norm"]
        if kwargs.get("loss") is None:
            return
        # values may be device tensors: add them up lazily, read them once in calculate()
        loss, tokens = kwargs["loss"], kwargs.get("num_tokens")
        tokens = 0 if tokens is None else tokens
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
        if isinstance(tokens, torch.Tensor) or tokens > 0:
            self._sum = self._sum + loss
            self._tokens = self._tokens + tokens
        else:
            self._mean_sum = self._mean_sum + loss
            self._mean_count += 1

    def calculate(self) -> dict[str, str]:
        total, tokens, mean_sum, mean_count = self._all_reduce_sum(
            [float(self._sum), float(self._tokens), float(self._mean_sum), float(self._mean_count)]
        )
        out: dict[str, str] = {}
        if tokens > 0:
            out["loss"] = fmt(total / tokens)
        elif mean_count > 0:
            out["loss"] = fmt(mean_sum / mean_count)
        if self._grad_norm is not None:
            out["grad_norm"] = fmt(float(self._grad_norm))
        self.reset()
        return out
