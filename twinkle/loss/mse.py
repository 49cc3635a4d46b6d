"""Mean squared error of the model's logits against float labels (regression heads, reward models)."""

from __future__ import annotations

from typing import Any

import torch

from twinkle.loss.base import Loss

__all__ = ["MSELoss"]


class MSELoss(Loss):
    """``mean((logits - labels)**2)``; ``num_tokens=0`` (already a mean).

    ``logits`` may carry a trailing size-1 dimension (a scalar head), which is squeezed to match ``labels``.
    """

    require_logits = True
    require_logps = False

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        logits = outputs["logits"]
        labels = inputs["labels"].to(device=logits.device, dtype=torch.float32)
        if logits.dim() == labels.dim() + 1 and logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
        if logits.shape != labels.shape:
            raise ValueError(f"MSELoss: logits shape {tuple(logits.shape)} does not match labels {tuple(labels.shape)}")
        return {"loss": torch.nn.functional.mse_loss(logits.float(), labels), "num_tokens": 0}
