from __future__ import annotations

from typing import Any

import torch

from twinkle.metric.base import Metric

__all__ = ["DPOMetric"]

_PAD = -200.0  # upstream pads list-form logps with -200


def _as_tensor(logps: Any) -> torch.Tensor:
    if isinstance(logps, torch.Tensor):
        return logps.detach().float()
    rows = [torch.as_tensor(r, dtype=torch.float32).reshape(-1) for r in logps]
    width = max(r.numel() for r in rows)
    out = torch.full((len(rows), width), _PAD)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


class DPOMetric(Metric):
    """Preference-training numbers from the policy's (and the reference's) log-probabilities, as upstream.

    Reads ``outputs['logps']`` (a ``[B, T]`` tensor, or rows padded with -200) on interleaved chosen/rejected
    rows; ``S = sum(m * logp)`` per row with ``m = labels != ignore_index``. With the reference
    (``ref_outputs['logps']`` passed to ``forward_backward``, or ``ref_logps=``), ``reward = beta * (S - S_ref)``.

    Keys, means over the pairs since the last report, over all ranks: ``logps/chosen``, ``logps/rejected``
    (``%.2f``); with a reference also ``logps/ref_chosen``, ``logps/ref_rejected``, ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins`` (``%.4f``) and ``rewards/accuracies``, the percentage of pairs with a
    positive margin (``'%.1f%'``). No data: ``{}``.

    Args:
        ignore_index: the label value of unlabelled tokens.
        beta: the reward scale; use the loss's ``beta``: ``model.add_metric(DPOMetric, beta=0.1)``.
    """

    _KEYS = ("chosen", "rejected", "ref_chosen", "ref_rejected", "pol_chosen", "pol_rejected", "correct", "pairs",
             "ref_pairs")

    def __init__(self, device_mesh: Any = None, process_group: Any = None, ignore_index: int = -100,
                 beta: float = 0.1, **kwargs: Any) -> None:
        self.ignore_index = ignore_index
        self.beta = float(beta)
        super().__init__(device_mesh, process_group)

    def reset(self) -> None:
        self._sums: dict[str, Any] = {k: 0.0 for k in self._KEYS}

    def _sequence(self, logps: Any, labels: torch.Tensor) -> torch.Tensor:
        t = _as_tensor(logps)
        if t.dim() == 1:  # already sequence sums
            return t.to(labels.device)
        width = min(t.shape[1], labels.shape[1])
        t = t[:, :width].to(labels.device)
        mask = (labels[:, :width] != self.ignore_index) & (t != _PAD)
        return (t * mask).sum(-1)

    @torch.no_grad()
    def accumulate(self, inputs: Any, outputs: Any, **kwargs: Any) -> None:
        if not isinstance(outputs, dict) or outputs.get("logps") is None or not isinstance(inputs, dict):
            return
        labels = inputs.get("labels")
        if labels is None or labels.shape[0] % 2:
            return
        policy = self._sequence(outputs["logps"], labels)
        s = self._sums
        s["chosen"] = s["chosen"] + policy[0::2].sum()
        s["rejected"] = s["rejected"] + policy[1::2].sum()
        s["pairs"] += labels.shape[0] // 2
        ref_outputs = kwargs.get("ref_outputs")
        ref = kwargs.get("ref_logps")
        if ref is None and isinstance(ref_outputs, dict):
            ref = ref_outputs.get("logps")
        if ref is None:
            return
        ref_seq = self._sequence(ref, labels)
        margins = self.beta * ((policy[0::2] - ref_seq[0::2]) - (policy[1::2] - ref_seq[1::2]))
        s["ref_chosen"] = s["ref_chosen"] + ref_seq[0::2].sum()
        s["ref_rejected"] = s["ref_rejected"] + ref_seq[1::2].sum()
        s["pol_chosen"] = s["pol_chosen"] + policy[0::2].sum()
        s["pol_rejected"] = s["pol_rejected"] + policy[1::2].sum()
        s["correct"] = s["correct"] + (margins > 0).float().sum()
        s["ref_pairs"] += labels.shape[0] // 2

    def calculate(self) -> dict[str, str]:
        sums = self._all_reduce_sum([float(self._sums[k]) for k in self._KEYS])
        values = dict(zip(self._KEYS, sums, strict=True))
        self.reset()
        out: dict[str, str] = {}
        pairs, ref_pairs = values["pairs"], values["ref_pairs"]
        if pairs > 0:
            out["logps/chosen"] = f"{values['chosen'] / pairs:.2f}"
            out["logps/rejected"] = f"{values['rejected'] / pairs:.2f}"
        if ref_pairs > 0:
            # rewards over the batches that had a reference (pol_* are the policy sums of those batches only)
            ref_c, ref_r = values["ref_chosen"] / ref_pairs, values["ref_rejected"] / ref_pairs
            pol_c, pol_r = values["pol_chosen"] / ref_pairs, values["pol_rejected"] / ref_pairs
            chosen_reward, rejected_reward = self.beta * (pol_c - ref_c), self.beta * (pol_r - ref_r)
            out["logps/ref_chosen"] = f"{ref_c:.2f}"
            out["logps/ref_rejected"] = f"{ref_r:.2f}"
            out["rewards/chosen"] = f"{chosen_reward:.4f}"
            out["rewards/rejected"] = f"{rejected_reward:.4f}"
            out["rewards/margins"] = f"{chosen_reward - rejected_reward:.4f}"
            out["rewards/accuracies"] = f"{100.0 * values['correct'] / ref_pairs:.1f}%"
        return out
