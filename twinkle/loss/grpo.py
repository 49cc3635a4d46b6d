"""``GRPOLoss``: the clipped policy-gradient objective of GRPO / PPO on per-token log-probabilities.

Per labelled token ``t`` of sequence ``i``, with ``A`` the advantage, ``old`` the log-probability under the
policy that sampled the data and ``ref`` under the reference model::

    r      = exp(clamp(logp - old, -20, 20))
    loss_t = -min(r * A, clamp(r, 1 - epsilon, 1 + epsilon_high) * A)
             + beta * (exp(ref - logp) - (ref - logp) - 1)          # k3 KL estimator, when beta != 0
             - entropy_coef * H_t                                    # when entropy_coef > 0
    loss   = mean_i( sum_t(loss_t * mask) / max(1, sum_t(mask)) )    # per-sequence mean, then batch mean

``mask`` is ``labels != -100``. This is TRL's ``GRPOTrainer`` objective with ``loss_type='grpo'``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from twinkle.loss.base import Loss, get_entropies, get_logps

__all__ = ["GRPOLoss", "scatter_to_mask"]

_LOG_RATIO_CLAMP = 20.0


def scatter_to_mask(
    values: Any, mask: torch.Tensor, name: str, per_sequence: bool = False
) -> torch.Tensor:
    """Turn per-token (or, with ``per_sequence``, per-sequence) values into a ``[batch, seq]`` float tensor.

    Accepted forms:
        * a ``[batch, seq]`` tensor/array aligned with the labels (used as is; unlabelled positions zeroed); a
          wider one whose extra right-hand columns are all 0 (logps of a batch padded longer) is cropped;
        * ragged rows, a list of ``batch`` lists / 1-D tensors holding one value per *labelled* token of that
          row, in order (what a sampler returns for the completion): scattered onto the label mask;
        * with ``per_sequence``: a scalar, or ``batch`` numbers (list or 1-D tensor), broadcast over each row.

    Raises:
        ValueError: the shape fits none of these; the message gives the shapes found and expected.
    """
    batch, seq = mask.shape
    device, dtype = mask.device, torch.float32
    if isinstance(values, (int, float)) and per_sequence:
        return torch.full((batch, seq), float(values), device=device, dtype=dtype) * mask
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    if isinstance(values, torch.Tensor):
        t = values.detach().to(device=device, dtype=dtype)
        if t.shape == mask.shape:
            return t * mask
        if per_sequence and (t.dim() == 0 or (t.dim() == 1 and t.shape[0] == batch)):
            return t.reshape(-1, 1).expand(batch, seq) * mask
        if t.dim() == 2 and t.shape[0] == batch and t.shape[1] > seq and not t[:, seq:].any():
            # logps from a forward over a wider-padded batch (e.g. the whole batch, before a per-rank slice
            # re-padded it): right padding keeps positions aligned, and the extra columns are all 0
            return t[:, :seq] * mask
        if t.dim() == 2 and t.shape[0] == batch:
            values = list(t)  # [batch, n] padded completions: handled as ragged rows below only if lengths match
        else:
            raise ValueError(_shape_error(name, tuple(t.shape), batch, seq, per_sequence))
    rows = list(values)
    if len(rows) != batch:
        raise ValueError(_shape_error(name, f"{len(rows)} rows", batch, seq, per_sequence))
    if per_sequence and all(_is_number(r) for r in rows):
        return torch.tensor([float(r) for r in rows], device=device, dtype=dtype).view(-1, 1).expand(batch, seq) * mask
    out = torch.zeros(batch, seq, device=device, dtype=dtype)
    for i, row in enumerate(rows):
        row_t = torch.as_tensor(row.detach() if isinstance(row, torch.Tensor) else row, dtype=dtype).to(device)
        positions = mask[i].nonzero(as_tuple=True)[0]
        if row_t.numel() != positions.numel():
            raise ValueError(
                f"{name}[{i}] has {row_t.numel()} values but row {i} has {positions.numel()} labelled tokens; "
                f"pass one value per labelled token (labels != -100), in order, or a [batch, seq] tensor aligned "
                f"with the labels"
            )
        out[i, positions] = row_t.reshape(-1)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) or (isinstance(value, torch.Tensor) and value.dim() == 0)


def _shape_error(name: str, got: Any, batch: int, seq: int, per_sequence: bool) -> str:
    forms = f"a [{batch}, {seq}] tensor aligned with the labels, or {batch} ragged rows (one value per labelled token)"
    if per_sequence:
        forms += f", or {batch} numbers (one per sequence)"
    return f"{name} has shape {got}; expected {forms}"


class GRPOLoss(Loss):
    """GRPO's clipped surrogate loss with optional k3 KL penalty and entropy bonus (see the module docstring).

    Args:
        epsilon: lower clip range, the ratio is clipped at ``1 - epsilon``.
        epsilon_high: upper clip range (``1 + epsilon_high``); ``None`` uses ``epsilon`` (DAPO's clip-higher
            when set larger).
        beta: weight of the k3 KL term against ``ref_logps``; 0 disables it (and needs no reference).
        entropy_coef: weight of the entropy bonus; > 0 sets ``require_entropy`` so the model computes
            ``outputs['entropies']``.
        ignore_index: label value that carries no loss.

    Keyword arguments of the call (they reach it from ``model.forward_backward(inputs=..., advantages=...,
    old_logps=..., ref_logps=...)``):
        advantages: one per sequence (list, 1-D tensor) or per token (``[batch, seq]`` or ragged rows). ``None``
            gives a loss of 0 (with a graph, so ``backward`` still runs).
        old_logps: the sampling policy's log-probabilities, ``[batch, seq]`` aligned with the labels or ragged
            rows (the sampler's completion logprobs). ``None`` means on-policy: ``old = logp.detach()``, ratio 1.
        ref_logps: the reference model's log-probabilities, same forms; ``ref_outputs={'logps': ...}`` works too.

    Returns ``{'loss': 0-dim tensor, 'num_tokens': 0}`` (already a mean: the model averages it over gradient
    accumulation steps). It also leaves detached statistics in ``outputs['grpo_stats']`` for ``GRPOMetric``.

    Raises:
        ValueError: ``beta != 0`` without reference log-probabilities, or a keyword with a shape that does not
            fit the batch (the message lists the accepted shapes).
        KeyError: ``entropy_coef > 0`` but ``outputs`` has no ``entropies``.
    """

    def __init__(
        self,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        beta: float = 0.0,
        entropy_coef: float = 0.0,
        ignore_index: int = -100,
    ) -> None:
        if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
            raise ValueError(f"epsilon and epsilon_high must be >= 0, got {epsilon}, {epsilon_high}")
        self.epsilon = epsilon
        self.epsilon_high = epsilon if epsilon_high is None else epsilon_high
        self.beta = beta
        self.entropy_coef = entropy_coef
        self.ignore_index = ignore_index
        self.require_entropy = entropy_coef > 0
        self.require_logits = False

    def __call__(
        self,
        inputs: dict[str, Any],
        outputs: dict[str, Any],
        advantages: Any = None,
        old_logps: Any = None,
        ref_logps: Any = None,
        ref_outputs: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        logps = outputs.get("logps")
        if logps is None:
            logps = get_logps(inputs, outputs, self.ignore_index)
        labels = inputs["labels"].to(logps.device)
        mask = (labels != self.ignore_index).to(torch.float32)
        if advantages is None:
            # nothing to learn from, but keep a graph so forward_backward's backward still works
            return {"loss": (logps * 0.0).sum(), "num_tokens": 0}
        adv = scatter_to_mask(advantages, mask, "advantages", per_sequence=True)
        logps = logps.float()
        old = logps.detach() if old_logps is None else scatter_to_mask(old_logps, mask, "old_logps")
        log_ratio = (logps - old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        per_token, ratio = self._policy_loss(logps, log_ratio, adv, mask)

        ref_kl = None
        if self.beta != 0:
            if ref_logps is None and isinstance(ref_outputs, dict):
                ref_logps = ref_outputs.get("logps")
            if ref_logps is None:
                raise ValueError(
                    f"{type(self).__name__}(beta={self.beta}) needs the reference model's log-probabilities: pass "
                    "ref_logps=... (e.g. ref_model.forward_only(inputs=batch)['logps']) or set beta=0"
                )
            ref = scatter_to_mask(ref_logps, mask, "ref_logps")
            delta = (ref - logps).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
            ref_kl = torch.exp(delta) - delta - 1.0
            per_token = per_token + self.beta * ref_kl

        entropy = get_entropies(outputs)
        if self.entropy_coef > 0:
            if entropy is None:
                raise KeyError(
                    f"{type(self).__name__}(entropy_coef>0) needs outputs['entropies']; the model computes them when "
                    "the loss's require_entropy is True (set by entropy_coef > 0)"
                )
            per_token = per_token - self.entropy_coef * entropy.float()

        loss = self._aggregate(per_token, mask, kwargs)
        outputs["grpo_stats"] = self._stats(log_ratio, ratio, adv, mask, ref_kl, entropy)
        return {"loss": loss, "num_tokens": 0}

    # the two hooks the variants (GSPO, SAPO, CISPO, BNPO, Dr. GRPO) override

    def _policy_loss(self, logps, log_ratio, adv, mask):
        """Per-token policy loss ``[B, T]`` and the ratio used (for the clip statistics)."""
        ratio = torch.exp(log_ratio)
        clipped = ratio.clamp(1.0 - self.epsilon, 1.0 + self.epsilon_high)
        return -torch.min(ratio * adv, clipped * adv), ratio

    def _aggregate(self, per_token, mask, kwargs) -> torch.Tensor:
        """GRPO: the mean over sequences of each sequence's token mean."""
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()

    @torch.no_grad()
    def _stats(self, log_ratio, ratio, adv, mask, ref_kl, entropy) -> dict[str, torch.Tensor]:
        """Token sums for GRPOMetric: k3 KL(old || new) estimate, clipped tokens, entropy, KL to the reference."""
        d = -log_ratio.detach()  # old - new
        stats = {
            "tokens": mask.sum(),
            "approx_kl": ((torch.exp(d) - d - 1.0) * mask).sum(),
            "clipped": ((((ratio < 1.0 - self.epsilon) & (adv < 0)) | ((ratio > 1.0 + self.epsilon_high) & (adv > 0)))
                        .float() * mask).sum(),
        }
        if entropy is not None:
            stats["entropy"] = (entropy.detach().float() * mask).sum()
        if ref_kl is not None:
            stats["ref_kl"] = (ref_kl.detach() * mask).sum()
        return stats
