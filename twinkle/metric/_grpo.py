from __future__ import annotations

from typing import Any

import torch

from twinkle.metric.base import Metric, fmt

__all__ = ["GRPOMetric"]

_ENTROPY_CHUNK = 512  # labelled tokens per float32 log-softmax when the entropy comes from the logits


class GRPOMetric(Metric):
    """Token-weighted statistics of ``GRPOLoss`` since the last report, over all ranks:

    * ``train/approx_kl``: k3 estimate of KL(old policy || current policy), ``mean(exp(d) - d - 1)`` with
      ``d = old_logp - logp`` (the PPO "approx_kl"; 0 when no ``old_logps`` were given).
    * ``train/clip_ratio``: fraction of labelled tokens whose objective was clipped (ratio above ``1+eps_high``
      with a positive advantage, or below ``1-eps`` with a negative one), TRL's definition.
    * ``train/entropy``: mean per-token entropy of the policy; from ``outputs['entropy']`` when the loss asked
      for it (``entropy_coef > 0``), else computed from the logits under ``no_grad``.
    * ``train/ref_kl``: only when ``beta != 0``, the k3 KL to the reference that the loss penalises.

    Reads the ``outputs['grpo_stats']`` sums ``GRPOLoss`` leaves behind; batches without them are skipped, so
    it can sit beside other losses. Add it with ``model.add_metric('GRPOMetric', is_training=True)``.
    """

    def reset(self) -> None:
        self._sums: dict[str, Any] = {k: 0.0 for k in ("tokens", "approx_kl", "clipped", "entropy", "entropy_tokens",
                                                       "ref_kl")}
        self._has_ref = False

    @torch.no_grad()
    def accumulate(self, inputs: Any, outputs: Any, **kwargs: Any) -> None:
        stats = outputs.get("grpo_stats") if isinstance(outputs, dict) else None
        if not stats:
            return
        # device tensors, read once in calculate(): an .item() here would stall the GPU before the backward
        s = self._sums
        s["tokens"] = s["tokens"] + stats["tokens"]
        s["approx_kl"] = s["approx_kl"] + stats["approx_kl"]
        s["clipped"] = s["clipped"] + stats["clipped"]
        if "ref_kl" in stats:
            s["ref_kl"] = s["ref_kl"] + stats["ref_kl"]
            self._has_ref = True
        entropy = stats.get("entropy")
        if entropy is None:
            entropy = self._entropy_from_logits(inputs, outputs)
        if entropy is not None:
            s["entropy"] = s["entropy"] + entropy
            s["entropy_tokens"] = s["entropy_tokens"] + stats["tokens"]

    @staticmethod
    def _entropy_from_logits(inputs: Any, outputs: dict[str, Any]) -> torch.Tensor | None:
        logits = outputs.get("logits")
        labels = inputs.get("labels") if isinstance(inputs, dict) else None
        if logits is None or labels is None:
            return None
        picked = logits[labels.to(logits.device) != -100]  # [labelled tokens, vocab]
        total = logits.new_zeros((), dtype=torch.float32)
        for start in range(0, picked.shape[0], _ENTROPY_CHUNK):
            logp = torch.log_softmax(picked[start : start + _ENTROPY_CHUNK].float(), dim=-1)
            total = total - (logp.exp() * logp).sum()
        return total

    def calculate(self) -> dict[str, str]:
        keys = list(self._sums)
        values = dict(zip(keys, self._all_reduce_sum([float(self._sums[k]) for k in keys]), strict=True))
        has_ref = self._has_ref
        self.reset()
        tokens = values["tokens"]
        if tokens <= 0:
            return {}
        out = {
            "train/approx_kl": fmt(values["approx_kl"] / tokens),
            "train/clip_ratio": fmt(values["clipped"] / tokens),
        }
        if values["entropy_tokens"] > 0:
            out["train/entropy"] = fmt(values["entropy"] / values["entropy_tokens"])
        if has_ref:
            out["train/ref_kl"] = fmt(values["ref_kl"] / tokens)
        return out
