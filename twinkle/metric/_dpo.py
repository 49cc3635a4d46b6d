from __future__ import annotations

from typing import Any

import torch

from twinkle.metric.base import Metric, fmt

_STATS_KEY = "dpo_stats"  # twinkle.loss.dpo.DPO_STATS_KEY; not imported so metrics never import losses


class DPOMetric(Metric):
    """Preference-training numbers as TRL's ``DPOTrainer`` logs them, averaged over the pairs seen since the last
    report, on all ranks:

    ``rewards/chosen``, ``rewards/rejected`` (mean of ``β·(policy - reference)`` sequence log-probabilities),
    ``rewards/accuracies`` (share of pairs whose chosen reward is strictly above the rejected one, so 0 before
    any training, when both rewards are 0), ``rewards/margins`` (mean chosen minus rejected reward),
    ``logps/chosen``, ``logps/rejected`` (mean policy sequence log-probabilities).

    It reads the per-pair numbers ``DPOLoss`` stores in ``outputs['dpo_stats']``; batches without them (another
    loss) are skipped. A ``DPOLoss`` call without a reference stores log-probabilities only, so only ``logps/*``
    are reported then. Add it with ``model.add_metric('DPOMetric', is_training=True)``.
    """

    _KEYS = ("chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps")

    def reset(self) -> None:
        self._sums: dict[str, Any] = {k: 0.0 for k in self._KEYS}
        self._correct: Any = 0.0
        self._pairs = 0.0
        self._reward_pairs = 0.0

    @torch.no_grad()
    def accumulate(self, inputs: Any, outputs: Any, **kwargs: Any) -> None:
        stats = outputs.get(_STATS_KEY) if isinstance(outputs, dict) else None
        if not stats:
            return
        pairs = int(stats["chosen_logps"].shape[0])
        self._pairs += pairs
        # device tensors, summed lazily and read once in calculate(): no host sync before the backward pass
        for key in self._KEYS:
            if stats.get(key) is not None:
                self._sums[key] = self._sums[key] + stats[key].float().sum()
        if stats.get("chosen_rewards") is not None:
            self._reward_pairs += pairs
            self._correct = self._correct + (stats["chosen_rewards"] > stats["rejected_rewards"]).float().sum()

    def calculate(self) -> dict[str, str]:
        values = [float(self._sums[k]) for k in self._KEYS] + [float(self._correct), self._pairs, self._reward_pairs]
        chosen_r, rejected_r, chosen_lp, rejected_lp, correct, pairs, reward_pairs = self._all_reduce_sum(values)
        self.reset()
        out: dict[str, str] = {}
        if reward_pairs > 0:
            out["rewards/chosen"] = fmt(chosen_r / reward_pairs)
            out["rewards/rejected"] = fmt(rejected_r / reward_pairs)
            out["rewards/accuracies"] = fmt(correct / reward_pairs)
            out["rewards/margins"] = fmt((chosen_r - rejected_r) / reward_pairs)
        if pairs > 0:
            out["logps/chosen"] = fmt(chosen_lp / pairs)
            out["logps/rejected"] = fmt(rejected_lp / pairs)
        return out
