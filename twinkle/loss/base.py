"""The ``Loss`` interface: ``loss(inputs, outputs, **kw) -> {'loss': Tensor, 'num_tokens': int}``.

Labels arrive already rolled left by one (the template does it), so ``labels[:, t]`` is the target of
``logits[:, t]`` and no loss shifts again. A loss that returns ``num_tokens > 0`` is a *sum* over that many tokens:
the model divides the gradients by the global token count at the optimizer step, so gradient accumulation and data
parallelism give the same update as one process with the whole batch. ``num_tokens == 0`` marks a loss that is
already a mean; the model averages those over accumulation steps instead.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Loss", "selective_log_softmax"]


def selective_log_softmax(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``log_softmax(logits)`` gathered at ``labels``; 0 where the label is ``ignore_index``.

    Args:
        logits: ``[..., vocab]``.
        labels: ``[...]`` integer targets (already rolled).

    Returns:
        ``[...]`` float32 log-probabilities.
    """
    safe = labels.masked_fill(labels == ignore_index, 0)
    # logsumexp in float32: bf16 log-probabilities lose about two digits on large vocabularies
    logits = logits.float()
    logps = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logps.masked_fill(labels == ignore_index, 0.0)


class Loss:
    """Base class of every training loss.

    Subclasses implement ``__call__(inputs, outputs, **kw)`` where ``inputs`` is the collated batch (``labels``
    ``[batch, seq]`` among its keys) and ``outputs`` the model's outputs (``logps`` ``[batch, seq]``, and ``logits``
    ``[batch, seq, vocab]`` when ``require_logits`` is set).

    Attributes:
        require_logits: the model keeps ``logits`` in ``outputs`` for this loss.
        require_logps: the model computes ``logps`` (log-probability of each label) for this loss.
        require_entropy: the model computes the per-token entropy as ``outputs['entropy']``.
    """

    require_logits: bool = False
    require_logps: bool = True
    require_entropy: bool = False

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
