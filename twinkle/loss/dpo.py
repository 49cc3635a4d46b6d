"""Direct Preference Optimization (DPO) and its pairwise variants, on an interleaved batch of pairs.

The batch holds ``chosen_0, rejected_0, chosen_1, rejected_1, ...`` (rows ``0::2`` are chosen, ``1::2`` rejected),
so its size is even. A sequence's log-probability is the sum of its token ``logps`` over labelled positions.

Data parallelism: the DataLoader and the ``slice_dp`` dispatch give each data rank a *contiguous* slice of the
global batch (``DeviceMesh.get_slice``). A global batch of ``2 * k * dp`` rows therefore hands every rank ``k``
whole pairs: batch 4 over dp=2 gives ``[c0, r0]`` and ``[c1, r1]``. Any other size splits a pair across ranks; a
rank then holds an odd number of rows and this loss raises ``BatchSizeError``. Do not shuffle *rows* (shuffle
pairs before interleaving instead): a shuffled row order keeps the size even but pairs unrelated sequences.

The loss is a mean over pairs (``num_tokens=0``): the model averages it over accumulation steps, and DDP/FSDP
average it over data ranks, which equals the mean over the global batch when every rank holds as many pairs.

Metrics: each call also stores its detached per-pair rewards and log-probabilities in ``outputs['dpo_stats']``
(the model's internal outputs, which it hands to the metrics next); ``twinkle.metric.DPOMetric`` reads them, so
the rewards are computed once, with the loss's own ``beta`` and reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from twinkle.errors import BatchSizeError, ConfigError
from twinkle.loss.base import Loss, get_logps, pair_check
from twinkle.utils.logger import get_logger

__all__ = ["DPO_STATS_KEY", "DPOLoss"]

logger = get_logger("twinkle.loss")

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "kto_pair")
#: ``outputs[DPO_STATS_KEY]``: the detached per-pair numbers the last call computed, read by ``DPOMetric``.
DPO_STATS_KEY = "dpo_stats"


class DPOLoss(Loss):
    """Pairwise preference loss on interleaved chosen/rejected rows, against a frozen reference.

    With ``h = (πc - rc) - (πr - rr)`` (policy and reference sequence log-probabilities of the chosen and rejected
    rows) and ``z = β·h``, per pair:

    * ``'sigmoid'`` (DPO): ``-(1-ε)·logσ(z) - ε·logσ(-z)``; ``ε = label_smoothing`` (conservative DPO, as TRL).
    * ``'hinge'`` (SLiC): ``relu(1 - z)``.
    * ``'ipo'``: ``(h - 1/(2β))²`` with **length-averaged** log-probabilities. This follows the IPO paper and TRL
      (``logits - 1/(2·beta)`` on per-token means), not the literal ``(z - 1/(2β))²`` of our contract summary,
      which would scale the target by β².
    * ``'kto_pair'`` (upstream's paired form): ``1 - σ(β(πc - rc)) + σ(β(πr - rr))``.

    The result is the mean over pairs, plus ``sft_weight`` times the chosen rows' token-mean negative
    log-likelihood (TRL's ``rpo_alpha``).

    Reference log-probabilities, first found wins (upstream's order): ``ref_chosen_logps`` + ``ref_rejected_logps``
    (sequence sums ``[N]`` each); ``ref_logps`` (token log-probabilities ``[batch, seq]``, 0 where unlabelled; a
    longer ``seq`` is truncated, a shorter one raises; sequence sums ``[batch]`` are accepted too);
    ``ref_outputs['logps']`` (what ``model.forward_only(inputs=batch, disable_lora=True)`` returns, same forms);
    zeros when ``reference_free``. With none of these the loss is 0 (still part of the graph, so ``backward``
    works) and a warning says how to pass one.

    Args:
        beta: the inverse temperature β (> 0); larger keeps the policy closer to the reference.
        label_smoothing: ε in [0, 0.5): the assumed rate of flipped preference labels (``'sigmoid'`` only; other
            types raise rather than ignore it, where TRL only warns).
        loss_type: ``'sigmoid'``, ``'hinge'``, ``'ipo'`` or ``'kto_pair'``.
        reference_free: compare against a uniform reference (``rc = rr = 0``) when no reference is given.
        sft_weight: weight of the chosen rows' NLL added to the loss (0: pure DPO).
        ignore_index: the label value of unlabelled tokens.

    Raises:
        ConfigError: a bad argument (at construction).
        BatchSizeError: an odd number of rows, or a reference whose rows do not match the batch (at call).
    """

    def __init__(
        self,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        loss_type: str = "sigmoid",
        reference_free: bool = False,
        sft_weight: float = 0.0,
        ignore_index: int = -100,
    ) -> None:
        problems = []
        if loss_type not in LOSS_TYPES:
            problems.append(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        if not beta > 0:
            problems.append(f"beta must be > 0, got {beta!r}")
        if not 0 <= label_smoothing < 0.5:
            problems.append(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
        elif label_smoothing and loss_type != "sigmoid":
            problems.append(f"label_smoothing applies to loss_type='sigmoid' only; got loss_type={loss_type!r}")
        if sft_weight < 0:
            problems.append(f"sft_weight must be >= 0, got {sft_weight!r}")
        if problems:
            raise ConfigError("DPOLoss: " + "; ".join(problems))
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)
        self.loss_type = loss_type
        self.reference_free = reference_free
        self.sft_weight = float(sft_weight)
        self.ignore_index = ignore_index
        self._warned_no_ref = False

    # ------------------------------------------------------------------ helpers

    def _reference(self, kwargs: dict[str, Any], mask: torch.Tensor) -> torch.Tensor | None:
        """Reference sequence log-probabilities ``[2N]`` in upstream's priority order, or None."""
        chosen, rejected = kwargs.get("ref_chosen_logps"), kwargs.get("ref_rejected_logps")
        if chosen is not None and rejected is not None:
            c = torch.as_tensor(chosen).to(device=mask.device, dtype=torch.float32).reshape(-1)
            r = torch.as_tensor(rejected).to(device=mask.device, dtype=torch.float32).reshape(-1)
            if c.shape[0] * 2 != mask.shape[0] or r.shape != c.shape:
                raise BatchSizeError(
                    f"DPOLoss: ref_chosen_logps/ref_rejected_logps have {c.shape[0]}/{r.shape[0]} values for "
                    f"{mask.shape[0] // 2} pairs; pass one sequence log-probability per pair in each"
                )
            return torch.stack((c, r), dim=1).reshape(-1)
        ref = kwargs.get("ref_logps")
        if ref is None:
            ref_outputs = kwargs.get("ref_outputs")
            if ref_outputs is not None:
                ref = ref_outputs.get("logps") if isinstance(ref_outputs, dict) else getattr(ref_outputs, "logps", None)
                if ref is None:
                    raise ConfigError(
                        "DPOLoss: ref_outputs has no 'logps'; pass the result of "
                        "model.forward_only(inputs=batch, disable_lora=True) as ref_outputs="
                    )
        if ref is None:
            return None
        return self._ref_sequence_logps(ref, mask)

    def _ref_sequence_logps(self, ref: Any, mask: torch.Tensor) -> torch.Tensor:
        ref = torch.as_tensor(ref).to(device=mask.device, dtype=torch.float32)
        if ref.shape[0] != mask.shape[0]:
            raise BatchSizeError(
                f"DPOLoss: the reference has {ref.shape[0]} rows but the batch has {mask.shape[0]}; compute it with "
                f"forward_only on the same batch, in the same call pattern as forward_backward"
            )
        if ref.dim() == 1:
            return ref
        if ref.shape[1] < mask.shape[1]:
            raise ValueError(
                f"DPOLoss: the reference logps have {ref.shape[1]} positions but the batch has {mask.shape[1]}; "
                f"compute them with forward_only on the same (padded) batch"
            )
        # a longer reference (padded wider) is truncated to the batch's width, as upstream
        return (ref[:, : mask.shape[1]] * mask).sum(-1)

    def _no_reference(self, logps: torch.Tensor, policy: torch.Tensor, outputs: dict[str, Any]) -> dict[str, Any]:
        if not self._warned_no_ref:
            logger.warning(
                "DPOLoss got no reference log-probabilities, so its loss is 0 and nothing is learned: pass "
                "ref_outputs=model.forward_only(inputs=batch, disable_lora=True) to forward_backward, or build "
                "DPOLoss(reference_free=True)"
            )
            self._warned_no_ref = True
        outputs[DPO_STATS_KEY] = {"chosen_logps": policy[0::2].detach(), "rejected_logps": policy[1::2].detach()}
        return {"loss": logps.sum() * 0.0, "num_tokens": 0}

    # ------------------------------------------------------------------ the loss

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``inputs['labels']`` ``[2N, seq]`` and ``outputs['logps']`` ``[2N, seq]`` -> ``{'loss', 'num_tokens': 0}``.

        Keyword args: ``ref_outputs`` (a dict with ``logps``) or ``ref_logps``; other keys are ignored.
        """
        labels = inputs["labels"]
        logps = get_logps(inputs, outputs, self.ignore_index)
        pair_check(labels.shape[0], "DPOLoss")
        mask = (labels != self.ignore_index).to(device=logps.device, dtype=torch.float32)
        lengths = mask.sum(-1).clamp(min=1)
        policy = (logps.float() * mask).sum(-1)
        ref = self._reference(kwargs, mask)
        if ref is None and not self.reference_free:
            return self._no_reference(logps, policy, outputs)
        ref_seq = torch.zeros_like(policy) if ref is None else ref.detach()

        if self.loss_type == "ipo":
            policy_used, ref_used = policy / lengths, ref_seq / lengths
        else:
            policy_used, ref_used = policy, ref_seq
        pc, pr = policy_used[0::2], policy_used[1::2]
        rc, rr = ref_used[0::2], ref_used[1::2]
        chosen_ratio, rejected_ratio = pc - rc, pr - rr
        h = chosen_ratio - rejected_ratio
        beta = self.beta
        if self.loss_type == "sigmoid":
            eps = self.label_smoothing
            losses = -F.logsigmoid(beta * h) * (1 - eps) - F.logsigmoid(-beta * h) * eps
        elif self.loss_type == "hinge":
            losses = torch.relu(1 - beta * h)
        elif self.loss_type == "ipo":
            losses = (h - 1 / (2 * beta)) ** 2
        else:  # kto_pair, upstream's paired form
            losses = 1 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)
        loss = losses.mean()
        if self.sft_weight:
            chosen_mask = mask[0::2]
            nll = -(logps.float()[0::2] * chosen_mask).sum() / chosen_mask.sum().clamp(min=1)
            loss = loss + self.sft_weight * nll

        # rewards as TRL reports them: beta * (policy - reference) on the sequence sums, detached
        outputs[DPO_STATS_KEY] = {
            "chosen_rewards": (beta * (policy[0::2] - ref_seq[0::2])).detach(),
            "rejected_rewards": (beta * (policy[1::2] - ref_seq[1::2])).detach(),
            "chosen_logps": policy[0::2].detach(),
            "rejected_logps": policy[1::2].detach(),
        }
        return {"loss": loss, "num_tokens": 0}
