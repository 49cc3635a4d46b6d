"""The ``Loss`` interface: ``loss(inputs, outputs, **kw) -> {'loss': Tensor, 'num_tokens': int}``.

Labels arrive already rolled left by one (the template does it), so ``labels[:, t]`` is the target of
``logits[:, t]`` and no loss shifts again. A loss that returns ``num_tokens > 0`` is a *sum* over that many tokens:
the model divides the gradients by the global token count at the optimizer step, so gradient accumulation and data
parallelism give the same update as one process with the whole batch. ``num_tokens == 0`` (the int) marks a loss
that is already a mean; the model averages those over accumulation steps instead. A sum loss may return
``num_tokens`` as a 0-dim tensor, which spares a host-device synchronisation before the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Loss", "get_entropies", "get_logps", "selective_log_softmax"]


def selective_log_softmax(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``log_softmax(logits)`` gathered at ``labels``; 0 where the label is ``ignore_index``.

    Args:
        logits: ``[..., vocab]``.
        labels: ``[...]`` integer targets (already rolled).

    Returns:
        ``[...]`` float32 log-probabilities.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    # fused log_softmax + nll: the kernels (and the saved activation) of a plain cross entropy, so computing
    # logps costs no more memory or time than the usual loss; -100 rows come back as 0
    nll = torch.nn.functional.cross_entropy(
        flat, labels.reshape(-1).to(flat.device), ignore_index=-100, reduction="none"
    )
    logps = -nll.view(labels.shape)
    if ignore_index != -100:
        logps = logps.masked_fill(labels == ignore_index, 0.0)
    return logps


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


def get_logps(inputs: dict[str, Any], outputs: dict[str, Any], ignore_index: int = -100) -> torch.Tensor:
    """``outputs['logps']`` ``[B, T]``; when absent, log-softmax over the last ``T`` logits gathered at the labels
    (ignored labels read as 0), as upstream."""
    logps = outputs.get("logps")
    if logps is not None:
        return logps
    logits = outputs.get("logits")
    if logits is None:
        raise KeyError("the loss needs outputs['logps'] or outputs['logits'] (the model provides them with labels)")
    labels = inputs["labels"]
    logits = logits[:, -labels.shape[1]:]
    return selective_log_softmax(logits, labels.to(logits.device), ignore_index)


def get_entropies(outputs: dict[str, Any]) -> torch.Tensor | None:
    """Per-token entropies: upstream's key ``entropies`` (ours also wrote ``entropy``)."""
    value = outputs.get("entropies")
    return outputs.get("entropy") if value is None else value


def pair_check(rows: int, name: str) -> None:
    """Preference losses take interleaved ``[c1, r1, c2, r2, ...]`` rows; an odd count is an error."""
    if rows % 2:
        from twinkle.errors import PairedBatchError

        raise PairedBatchError(
            f"{name} needs an even number of rows (chosen, rejected, chosen, rejected, ...), got {rows}. Build "
            f"batches from whole pairs; with data parallelism make the global batch a multiple of 2 * data world "
            f"size and do not shuffle rows (each rank gets a contiguous slice)"
        )
