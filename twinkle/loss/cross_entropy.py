"""Token-level cross entropy on pre-rolled labels, plain and chunked."""

from __future__ import annotations

from typing import Any

import torch

from twinkle.loss.base import Loss, selective_log_softmax

__all__ = ["ChunkedCrossEntropyLoss", "CrossEntropyLoss"]

_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


class CrossEntropyLoss(Loss):
    """Per-token ``-log p(label)``, masked where the label is ``ignore_index``.

    Args:
        ignore_index: label value that carries no loss.
        reduction: ``'mean'`` gives the masked mean and ``num_tokens=0``; ``'sum'`` gives the masked sum and
            ``num_tokens`` = the number of labelled tokens (at least 1, a 0-dim tensor on the loss's device).
        dft: Dynamic Fine-Tuning: weight each token's ``-log p`` by its own (detached) probability ``p``.
    """

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", dft: bool = False) -> None:
        self.ignore_index = ignore_index
        self.reduction = _check_reduction(reduction)
        self.dft = dft

    def _token_logps(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> torch.Tensor:
        logps = outputs.get("logps")
        if logps is None:
            if outputs.get("logits") is None:
                raise KeyError("CrossEntropyLoss needs outputs['logps'] or outputs['logits']")
            logps = selective_log_softmax(outputs["logits"], inputs["labels"], self.ignore_index)
        return logps

    def _reduce(self, per_token: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        total = (per_token * mask).sum()
        # a tensor, not an int: reading it on the host would stall the GPU before the backward pass
        count = mask.sum().to(torch.long).clamp(min=1)
        if self.reduction == "sum":
            return {"loss": total, "num_tokens": count}
        return {"loss": total / count, "num_tokens": 0}

    def _per_token(self, logps: torch.Tensor) -> torch.Tensor:
        if self.dft:
            return -logps.detach().exp() * logps
        return -logps

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        labels = inputs["labels"]
        mask = (labels != self.ignore_index).to(torch.float32)
        logps = self._token_logps(inputs, outputs)
        return self._reduce(self._per_token(logps), mask.to(logps.device))


class ChunkedCrossEntropyLoss(CrossEntropyLoss):
    """The same values as ``CrossEntropyLoss``, computed from ``logits`` ``chunk_size`` tokens at a time.

    The full-vocabulary float32 log-softmax is never materialised for the whole batch at once, which bounds the
    peak memory on long sequences and large vocabularies.
    """

    require_logits = True
    require_logps = False

    def __init__(
        self, chunk_size: int = 1024, ignore_index: int = -100, reduction: str = "mean", dft: bool = False
    ) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, dft=dft)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        logits = outputs.get("logits")
        if logits is None:
            raise KeyError("ChunkedCrossEntropyLoss needs outputs['logits'] (its require_logits flag asks for them)")
        labels = inputs["labels"].to(logits.device)
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1)
        pieces = []
        for start in range(0, flat_labels.numel(), self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            logps = selective_log_softmax(flat_logits[chunk], flat_labels[chunk], self.ignore_index)
            pieces.append(self._per_token(logps))
        per_token = torch.cat(pieces).reshape(labels.shape)
        mask = (labels != self.ignore_index).to(torch.float32)
        return self._reduce(per_token, mask)
