from __future__ import annotations

import time
from typing import Any

from twinkle.metric.base import Metric, fmt


class TrainMetric(Metric):
    """``lr`` (of the first parameter group), ``iters`` (optimizer steps = micro-batches // accumulation steps) and
    ``speed`` (optimizer steps per second since the previous report)."""

    def reset(self) -> None:
        self._since = time.perf_counter()
        self._iters_at_reset = getattr(self, "_iters", 0)
        if not hasattr(self, "_iters"):
            self._iters = 0
            self._lr: float | None = None

    def accumulate(self, inputs: Any, outputs: Any, **kwargs: Any) -> None:
        if kwargs.get("lr") is not None:
            self._lr = float(kwargs["lr"])
        if kwargs.get("cur_step") is not None:
            gas = max(1, int(kwargs.get("gradient_accumulation_steps") or 1))
            self._iters = int(kwargs["cur_step"]) // gas

    def calculate(self) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self._since, 1e-9)
        out = {"iters": str(self._iters), "speed": fmt((self._iters - self._iters_at_reset) / elapsed)}
        if self._lr is not None:
            out["lr"] = fmt(self._lr)
        self.reset()
        return out
