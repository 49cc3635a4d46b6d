"""``GKDLoss``: generalised knowledge distillation (the generalised Jensen-Shannon divergence to a teacher)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from twinkle.loss.base import Loss

__all__ = ["GKDLoss"]


class GKDLoss(Loss):
    """Distil a teacher's token distributions into the student at labelled positions.

    With ``s``, ``t`` the log-softmax of student and teacher logits divided by ``temperature``:
    ``beta=0`` is ``KL(T || S)``, ``beta=1`` is ``KL(S || T)``, otherwise
    ``beta * KL(T || M) + (1 - beta) * KL(S || M)`` with ``M = log((1 - beta) e^s + beta e^t)``. The result is the
    mean over labelled positions (``num_tokens=0``).

    The teacher comes as ``teacher_logits`` ``[B, T, V]`` or as the pair ``teacher_topk_logprobs`` /
    ``teacher_topk_indices`` ``[B, T, k]`` (the student's logits are then gathered at those indices, and both
    sides are renormalised over the k entries).

    Args:
        beta: the interpolation in [0, 1].
        temperature: > 0.
        chunk_size: labelled positions per chunk (bounds the ``[n, V]`` working memory).

    Raises:
        ValueError: beta outside [0, 1], temperature <= 0, or no teacher given.
    """

    require_logits = True
    require_logps = False

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100,
                 chunk_size: int = 512) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"GKDLoss: beta must be in [0, 1], got {beta}")
        if not temperature > 0:
            raise ValueError(f"GKDLoss: temperature must be > 0, got {temperature}")
        self.beta, self.temperature = float(beta), float(temperature)
        self.ignore_index, self.chunk_size = ignore_index, int(chunk_size)

    def _divergence(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-position divergence ``[n]`` between log-distributions ``s`` and ``t`` ``[n, V]``."""
        if self.beta == 0.0:
            return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)  # KL(T || S)
        if self.beta == 1.0:
            return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)  # KL(S || T)
        mix = torch.logsumexp(
            torch.stack((s + math.log(1 - self.beta), t + math.log(self.beta))), dim=0
        )
        kl_t = F.kl_div(mix, t, reduction="none", log_target=True).sum(-1)
        kl_s = F.kl_div(mix, s, reduction="none", log_target=True).sum(-1)
        return self.beta * kl_t + (1 - self.beta) * kl_s

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], teacher_logits: Any = None,
                 teacher_topk_logprobs: Any = None, teacher_topk_indices: Any = None, **kwargs: Any):
        logits = outputs.get("logits")
        if logits is None:
            raise KeyError("GKDLoss needs outputs['logits'] (require_logits is set, so the model keeps them)")
        labels = inputs["labels"].to(logits.device)
        logits = logits[:, -labels.shape[1]:]
        mask = labels != self.ignore_index
        student = logits[mask].float() / self.temperature  # [n, V]
        if teacher_logits is not None:
            teacher = torch.as_tensor(teacher_logits).to(logits.device)[:, -labels.shape[1]:][mask].float()
            teacher = teacher / self.temperature
        elif teacher_topk_logprobs is not None and teacher_topk_indices is not None:
            idx = torch.as_tensor(teacher_topk_indices).to(logits.device)[:, -labels.shape[1]:][mask].long()
            teacher = torch.as_tensor(teacher_topk_logprobs).to(logits.device)[:, -labels.shape[1]:][mask].float()
            teacher = teacher / self.temperature
            student = student.gather(-1, idx)
        else:
            raise ValueError(
                "GKDLoss needs the teacher: pass teacher_logits=[B, T, V], or teacher_topk_logprobs= and "
                "teacher_topk_indices= ([B, T, k]) to forward_backward"
            )
        n = student.shape[0]
        if n == 0:
            return {"loss": logits.sum() * 0.0, "num_tokens": 0}
        total = student.new_zeros(())
        for start in range(0, n, self.chunk_size):
            s = torch.log_softmax(student[start:start + self.chunk_size], -1)
            t = torch.log_softmax(teacher[start:start + self.chunk_size], -1)
            total = total + self._divergence(s, t).sum()
        return {"loss": total / n, "num_tokens": 0}
