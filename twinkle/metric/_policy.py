"""Upstream's policy-gradient metrics for GSPO and CISPO (float values), and ``EmbeddingMetric``."""

from __future__ import annotations

import math
from typing import Any

import torch

from twinkle.loss.grpo import scatter_to_mask
from twinkle.metric.base import Metric

__all__ = ["CISPOMetric", "EmbeddingMetric", "GSPOMetric", "PolicyMetric"]


class PolicyMetric(Metric):
    """Token statistics of a policy-gradient step, as upstream's ``GRPOMetric`` reports them (floats).

    ``accumulate(inputs, outputs, old_logps=None, advantages=None, ...)`` reads ``outputs['logps']`` (multiplied by
    ``temperature``, as upstream) and, when present, ``outputs['entropies']``. Keys (token means over all ranks):

    * always ``train/policy_confidence`` (exp of the mean logp) and ``train/mean_new_logp``;
    * with ``old_logps``: ``train/mean_old_logp``, ``train/logp_diff_mean``, ``train/approx_kl`` (mean of
      ``e^d - d - 1`` with ``d = new - old``), ``train/token_kl_max``, ``train/token_ratio_max``;
    * with entropies: ``train/entropy``;
    * with ``advantages``: ``train/clip_ratio_low`` (``r < 1 - ε`` with ``A < 0``), ``train/clip_ratio_high``
      (``r > 1 + ε_high`` with ``A > 0``) and ``train/clip_ratio`` (their sum).

    Subclasses change the clip rule: ``GSPOMetric`` per sequence on ``exp(mean d)``, ``CISPOMetric`` per token
    ignoring the sign of A. ``top_k_kl > 0`` (upstream's high-KL token records) is not built and raises.
    """

    _SUM_KEYS = ("tokens", "new", "old", "diff", "kl", "entropy", "entropy_tokens", "low", "high", "clip_units")

    def __init__(self, device_mesh: Any = None, process_group: Any = None, ignore_index: int = -100,
                 temperature: float = 1.0, epsilon: float = 0.2, epsilon_high: float | None = None,
                 top_k_kl: int = 0, **kwargs: Any) -> None:
        if top_k_kl:
            from twinkle.errors import NotBuiltError

            raise NotBuiltError(f"{type(self).__name__}(top_k_kl={top_k_kl}): the high-KL token records are not "
                                "built in Twinkle Commons; use top_k_kl=0")
        self.ignore_index, self.temperature = ignore_index, float(temperature)
        self.epsilon = float(epsilon)
        self.epsilon_high = self.epsilon if epsilon_high is None else float(epsilon_high)
        super().__init__(device_mesh, process_group)

    def reset(self) -> None:
        self._sums = {k: 0.0 for k in self._SUM_KEYS}
        self._max = {"kl": -math.inf, "ratio": -math.inf}
        self._has = {"old": False, "entropy": False, "adv": False}

    def _clip_counts(self, d: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
        ratio = torch.exp(d)
        low = ((ratio < 1 - self.epsilon) & (adv < 0)).float() * mask
        high = ((ratio > 1 + self.epsilon_high) & (adv > 0)).float() * mask
        return float(low.sum()), float(high.sum()), float(mask.sum())

    @torch.no_grad()
    def accumulate(self, inputs: Any, outputs: Any, old_logps: Any = None, advantages: Any = None, **kwargs: Any):
        if not isinstance(outputs, dict) or outputs.get("logps") is None or not isinstance(inputs, dict):
            return
        logps = outputs["logps"].detach().float() * self.temperature
        mask = (inputs["labels"].to(logps.device) != self.ignore_index).float()
        s = self._sums
        tokens = float(mask.sum())
        s["tokens"] += tokens
        s["new"] += float((logps * mask).sum())
        d = None
        if old_logps is not None:
            old = scatter_to_mask(old_logps, mask, "old_logps")
            d = (logps - old) * mask
            kl = (torch.exp(d) - d - 1) * mask
            s["old"] += float((old * mask).sum())
            s["diff"] += float(d.sum())
            s["kl"] += float(kl.sum())
            if tokens:
                self._max["kl"] = max(self._max["kl"], float(kl[mask.bool()].max()))
                self._max["ratio"] = max(self._max["ratio"], float(torch.exp(d)[mask.bool()].max()))
            self._has["old"] = True
        entropies = outputs.get("entropies", outputs.get("entropy"))
        if entropies is not None:
            s["entropy"] += float((entropies.float() * mask).sum())
            s["entropy_tokens"] += tokens
            self._has["entropy"] = True
        if advantages is not None:
            adv = scatter_to_mask(advantages, mask, "advantages", per_sequence=True)
            low, high, units = self._clip_counts(d if d is not None else torch.zeros_like(mask), adv, mask)
            s["low"] += low
            s["high"] += high
            s["clip_units"] += units
            self._has["adv"] = True

    def calculate(self) -> dict[str, float]:
        sums = self._all_reduce_sum([float(self._sums[k]) for k in self._SUM_KEYS])
        values = dict(zip(self._SUM_KEYS, sums, strict=True))
        maxima, has = dict(self._max), dict(self._has)
        self.reset()
        tokens = values["tokens"]
        if tokens <= 0:
            return {}
        mean_new = values["new"] / tokens
        out = {"train/policy_confidence": math.exp(mean_new), "train/mean_new_logp": mean_new}
        if has["old"]:
            out["train/mean_old_logp"] = values["old"] / tokens
            out["train/logp_diff_mean"] = values["diff"] / tokens
            out["train/approx_kl"] = values["kl"] / tokens
            out["train/token_kl_max"] = maxima["kl"]
            out["train/token_ratio_max"] = maxima["ratio"]
        if has["entropy"] and values["entropy_tokens"] > 0:
            out["train/entropy"] = values["entropy"] / values["entropy_tokens"]
        if has["adv"] and values["clip_units"] > 0:
            out["train/clip_ratio_low"] = values["low"] / values["clip_units"]
            out["train/clip_ratio_high"] = values["high"] / values["clip_units"]
            out["train/clip_ratio"] = (values["low"] + values["high"]) / values["clip_units"]
        return out


class GSPOMetric(PolicyMetric):
    """``PolicyMetric`` with GSPO's clip rule: per sequence, on ``exp(mean d)``; ratios are shares of sequences."""

    def _clip_counts(self, d, adv, mask):
        lengths = mask.sum(-1).clamp(min=1)
        ratio = torch.exp(d.sum(-1) / lengths)
        seq_adv = (adv * mask).sum(-1) / lengths
        present = mask.sum(-1) > 0
        low = ((ratio < 1 - self.epsilon) & (seq_adv < 0) & present).float()
        high = ((ratio > 1 + self.epsilon_high) & (seq_adv > 0) & present).float()
        return float(low.sum()), float(high.sum()), float(present.sum())


class CISPOMetric(PolicyMetric):
    """``PolicyMetric`` with CISPO's clip rule: per token, whatever the sign of A."""

    def _clip_counts(self, d, adv, mask):
        ratio = torch.exp(d)
        low = (ratio < 1 - self.epsilon).float() * mask
        high = (ratio > 1 + self.epsilon_high).float() * mask
        return float(low.sum()), float(high.sum()), float(mask.sum())


class EmbeddingMetric(Metric):
    """Similarity statistics of an embedding batch (``outputs['embeddings']``, L2-normalised).

    Anchors are the rows whose label is not 0; each anchor's positive is the next row. Keys: ``pos_sim``,
    ``pos_sim_min``, ``pos_sim_max`` (cosine of anchor and positive), ``neg_sim`` (mean cosine of each anchor with
    the other anchors' positives), ``loss`` (``%.4f``), ``grad_norm`` (``%.6f``, only when > 0).
    """

    def reset(self) -> None:
        self._pos: list[float] = []
        self._neg_sum, self._neg_n = 0.0, 0
        self._loss_sum, self._loss_n = 0.0, 0
        self._grad_norm = 0.0

    @torch.no_grad()
    def accumulate(self, inputs: Any, outputs: Any, loss: Any = None, grad_norm: Any = None, **kwargs: Any):
        if grad_norm is not None:
            self._grad_norm = float(grad_norm)
        if loss is not None:
            self._loss_sum += float(loss)
            self._loss_n += 1
        if not isinstance(outputs, dict) or outputs.get("embeddings") is None or not isinstance(inputs, dict):
            return
        emb = outputs["embeddings"].detach().float()
        flags = torch.as_tensor(inputs["labels"])
        flags = flags if flags.dim() == 1 else flags[:, 0]
        anchors = [int(i) for i in (flags != 0).nonzero(as_tuple=True)[0] if int(i) + 1 < emb.shape[0]]
        if not anchors:
            return
        a = emb[anchors]
        p = emb[[i + 1 for i in anchors]]
        sims = a @ p.T
        self._pos.extend(float(x) for x in sims.diagonal())
        if len(anchors) > 1:
            off = ~torch.eye(len(anchors), dtype=torch.bool)
            self._neg_sum += float(sims[off].sum())
            self._neg_n += int(off.sum())

    def calculate(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self._pos:
            out["pos_sim"] = f"{sum(self._pos) / len(self._pos):.4f}"
            out["pos_sim_min"] = f"{min(self._pos):.4f}"
            out["pos_sim_max"] = f"{max(self._pos):.4f}"
        if self._neg_n:
            out["neg_sim"] = f"{self._neg_sum / self._neg_n:.4f}"
        if self._loss_n:
            out["loss"] = f"{self._loss_sum / self._loss_n:.4f}"
        if self._grad_norm > 0:
            out["grad_norm"] = f"{self._grad_norm:.6f}"
        self.reset()
        return out
