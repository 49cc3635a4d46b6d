from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from twinkle.metric.base import Metric, fmt

__all__ = ["CompletionRewardMetric"]


class CompletionRewardMetric(Metric):
    """Rewards and completion lengths of the sampled completions, over all ranks.

    Values (strings): ``train/{k}_reward`` (mean) and ``train/{k}_reward_std`` (unbiased std, 0 for a single
    value) for each reward name ``k``, and ``train/completion_length`` (mean tokens per completion) when lengths
    were given.

    Args:
        rewards: ``{name: [float, ...]}`` to start with (the contract's ``CompletionRewardMetric(rewards=...)``).
        completion_lengths: completion lengths to start with.

    ``accumulate(inputs, outputs, rewards={name: list}, completion_lengths=[int, ...])`` adds more; when
    ``completion_lengths`` is not given and ``inputs`` is a collated batch, each row's labelled-token count
    (``labels != -100``) is taken as its completion length. Calls without ``rewards`` add nothing to the
    rewards, so the metric can also sit in the model's list (``model.add_metric``).
    """

    def __init__(
        self,
        device_mesh: Any = None,
        process_group: Any = None,
        rewards: Mapping[str, Sequence[float]] | None = None,
        completion_lengths: Sequence[int] | None = None,
    ) -> None:
        super().__init__(device_mesh, process_group)
        if rewards is not None or completion_lengths is not None:
            self.accumulate(None, None, rewards=rewards, completion_lengths=completion_lengths)

    def reset(self) -> None:
        self._rewards: dict[str, list[float]] = {}  # name -> [count, sum, sum of squares]
        self._length = [0.0, 0.0]  # count, sum

    def accumulate(self, inputs: Any, outputs: Any, **kwargs: Any) -> None:
        rewards = kwargs.get("rewards")
        if rewards:
            if not isinstance(rewards, Mapping):
                raise TypeError(
                    "CompletionRewardMetric: rewards must be a dict {name: [float, ...]}, "
                    f"got {type(rewards).__name__}"
                )
            for name, values in rewards.items():
                vals = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
                acc = self._rewards.setdefault(str(name), [0.0, 0.0, 0.0])
                acc[0] += len(vals)
                acc[1] += sum(vals)
                acc[2] += sum(v * v for v in vals)
        lengths = kwargs.get("completion_lengths")
        if lengths is None and rewards and isinstance(inputs, dict) and isinstance(inputs.get("labels"), torch.Tensor):
            lengths = (inputs["labels"] != -100).sum(-1).tolist()
        if lengths is not None:
            lengths = lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)
            self._length[0] += len(lengths)
            self._length[1] += float(sum(lengths))

    def calculate(self) -> dict[str, str]:
        names = sorted(self._rewards)
        flat = [x for n in names for x in self._rewards[n]] + self._length
        flat = self._all_reduce_sum(flat)
        self.reset()
        out: dict[str, str] = {}
        for i, name in enumerate(names):
            count, total, squares = flat[3 * i : 3 * i + 3]
            if count <= 0:
                continue
            mean = total / count
            var = (squares - count * mean * mean) / (count - 1) if count > 1 else 0.0
            out[f"train/{name}_reward"] = fmt(mean)
            out[f"train/{name}_reward_std"] = fmt(math.sqrt(max(var, 0.0)))
        count, total = flat[-2:]
        if count > 0:
            out["train/completion_length"] = fmt(total / count)
        return out
