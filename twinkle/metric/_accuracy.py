from __future__ import annotations

from typing import Any

import torch

from twinkle.metric.base import Metric, fmt


class Accuracy(Metric):
    """Token accuracy of the argmax prediction on labelled tokens: ``accuracy``, ``correct_tokens``,
    ``total_tokens``. Needs ``outputs['logits']``; batches without them are skipped."""

    def __init__(self, device_mesh: Any = None, process_group: Any = None, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index
        super().__init__(device_mesh, process_group)

    def reset(self) -> None:
        self._correct = 0.0
        self._total = 0.0

    @torch.no_grad()
    def accumulate(self, inputs: Any, outputs: Any, **kwargs: Any) -> None:
        if not isinstance(outputs, dict) or outputs.get("logits") is None or not isinstance(inputs, dict):
            return
        labels = inputs.get("labels")
        if labels is None:
            return
        logits = outputs["logits"]
        labels = labels.to(logits.device)
        mask = labels != self.ignore_index
        preds = logits.argmax(dim=-1)
        # device tensors, read once in calculate(): an .item() here would stall the GPU before the backward
        self._correct = self._correct + ((preds == labels) & mask).sum()
        self._total = self._total + mask.sum()

    def calculate(self) -> dict[str, str]:
        correct, total = self._all_reduce_sum([float(self._correct), float(self._total)])
        self.reset()
        if total == 0:
            return {}
        return {"accuracy": fmt(correct / total), "correct_tokens": str(int(correct)), "total_tokens": str(int(total))}
