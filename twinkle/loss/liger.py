"""``LigerFusedLinearCrossEntropyLoss``: needs the ``liger-kernel`` package (a GPU kernel); no fallback, as upstream."""

from __future__ import annotations

from typing import Any

from twinkle.loss.base import Loss

__all__ = ["LigerFusedLinearCrossEntropyLoss"]


class LigerFusedLinearCrossEntropyLoss(Loss):
    """The fused lm-head + cross-entropy of liger-kernel. Construction imports liger-kernel, so without it this
    raises ImportError naming the package (upstream's behaviour; ``twinkle.kernel`` is a no-op without it)."""

    require_logits = True
    require_logps = False

    def __init__(self, ignore_index: int = -100, reduction: str = "sum", label_smoothing: float = 0.0,
                 softcap: float | None = None) -> None:
        assert reduction in ("mean", "sum"), f"reduction must be 'mean' or 'sum', got {reduction!r}"
        try:
            from liger_kernel.transformers import (  # type: ignore[import-not-found]
                LigerFusedLinearCrossEntropyLoss as _Liger,
            )
        except ImportError as exc:
            raise ImportError(
                "LigerFusedLinearCrossEntropyLoss needs the liger-kernel package (pip install liger-kernel, a GPU "
                "kernel); drop --enable-liger / use CrossEntropyLoss on this machine"
            ) from exc
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.softcap = label_smoothing, softcap
        self._fn = _Liger(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                          softcap=softcap)

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        import torch

        hidden, head, labels = outputs["logits"], outputs.get("lm_head"), inputs["labels"]
        mask = labels != self.ignore_index
        if head is None:
            loss = torch.nn.functional.cross_entropy(
                hidden.flatten(0, -2).float(), labels.flatten(), ignore_index=self.ignore_index,
                reduction=self.reduction)
        else:
            weight = head.weight
            loss = self._fn(weight, hidden.flatten(0, -2), labels.flatten())
        return {"loss": loss, "num_tokens": int(mask.sum().clamp(min=1))}
