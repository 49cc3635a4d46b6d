"""Sampling parameters and results (used by samplers and RL loops).

The same types serve ``TorchSampler`` and ``vLLMSampler``: ``to_vllm`` / ``to_transformers`` translate the
parameters for each backend, so a script switches samplers without touching its ``SamplingParams``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twinkle.errors import ConfigError

__all__ = ["STOP_REASONS", "SampleResponse", "SampledSequence", "SamplingParams"]

# why a completion ended: its max_tokens (or the model's limit), EOS / a stop string, aborted, failed
STOP_REASONS = ("length", "stop", "abort", "error")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """How to sample completions.

    Args:
        max_tokens: new tokens per completion (``None``: up to the model's limit; 0: prompt log-probs only).
        temperature: >= 0; 0 means greedy.
        top_k: -1 (off) or >= 1.
        top_p: in (0, 1].
        repetition_penalty: > 0.
        logprobs: how many log-probabilities to return per token (``None``: none; 1: the sampled token's).
        num_samples: completions per prompt, >= 1.
        stop: strings, or token ids, that end a completion.
        seed: sampling seed (``None``: the sampler's own generator, seeded ``42 + rank``).
        prompt_logprobs: also score the prompt: per prompt token its log-prob, plus this many top-k entries.

    Raises:
        ConfigError (a ValueError): a value outside its range; the message names every bad field and its range.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    num_samples: int = 1
    stop: list[str] | list[int] | str | None = None
    seed: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens is not None and not (_is_int(self.max_tokens) and self.max_tokens >= 0):
            problems.append(f"max_tokens must be None or an int >= 0, got {self.max_tokens!r}")
        if not isinstance(self.temperature, numbers.Real) or isinstance(self.temperature, bool) \
                or self.temperature < 0:
            problems.append(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not (_is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1)):
            problems.append(f"top_k must be -1 (off) or an int >= 1, got {self.top_k!r}")
        if not isinstance(self.top_p, numbers.Real) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.repetition_penalty, numbers.Real) or self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 0):
                problems.append(f"{name} must be None or an int >= 0, got {value!r}")
        if not (_is_int(self.num_samples) and self.num_samples >= 1):
            problems.append(f"num_samples must be an int >= 1, got {self.num_samples!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is not None:
            stop: list[Any] = list(self.stop)
            if not (all(isinstance(s, str) for s in stop) or all(_is_int(s) for s in stop)):
                problems.append(f"stop must be a string, a list of strings or a list of token ids, got {self.stop!r}")
            self.stop = stop
        if problems:
            raise ConfigError("invalid SamplingParams: " + "; ".join(problems))

    @property
    def stop_strings(self) -> list[str]:
        return [s for s in (self.stop or []) if isinstance(s, str) and s]

    @property
    def stop_token_ids(self) -> list[int]:
        return [int(s) for s in (self.stop or []) if _is_int(s)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplingParams:
        """Build from a dict: ``max_new_tokens`` is read as ``max_tokens``, unknown keys are dropped."""
        values = dict(values)
        if "max_new_tokens" in values:
            values.setdefault("max_tokens", values.pop("max_new_tokens"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_vllm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``vllm.SamplingParams`` for these parameters (pure; no vLLM needed)."""
        kw: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "n": self.num_samples}
        if self.max_tokens is not None:
            kw["max_tokens"] = self.max_tokens
        if self.seed is not None:
            kw["seed"] = self.seed
        if self.top_k > 0:
            kw["top_k"] = self.top_k
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        if self.stop_strings:
            kw["stop"] = self.stop_strings
        if self.stop_token_ids:
            kw["stop_token_ids"] = self.stop_token_ids
        if self.logprobs is not None:
            kw["logprobs"] = self.logprobs
        if self.prompt_logprobs is not None:
            kw["prompt_logprobs"] = self.prompt_logprobs
        return kw

    def to_vllm(self) -> Any:
        """A ``vllm.SamplingParams``.

        Raises:
            MissingDependencyError: vLLM is not installed.
        """
        from twinkle.utils.requires import requires

        vllm = requires("vllm", extra="vllm", what="SamplingParams.to_vllm")
        return vllm.SamplingParams(**self.to_vllm_kwargs())

    def to_transformers(self, tokenizer: Any = None) -> dict[str, Any]:
        """Keyword arguments of ``transformers``' ``generate`` / ``GenerationConfig``.

        ``max_new_tokens`` defaults to 2048. Stop token ids, and stop strings that are one token of ``tokenizer``,
        join the EOS list; longer stop strings go to ``stop_strings`` (``generate`` needs ``tokenizer=`` then).
        """
        kw: dict[str, Any] = {
            "do_sample": self.temperature > 0,
            "max_new_tokens": 2048 if self.max_tokens is None else self.max_tokens,
            "num_return_sequences": self.num_samples,
            "top_p": self.top_p,
            "top_k": self.top_k if self.top_k > 0 else None,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kw["temperature"] = self.temperature
        eos: list[int] = []
        if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos.append(int(tokenizer.eos_token_id))
        eos += self.stop_token_ids
        longer = []
        for s in self.stop_strings:
            ids = tokenizer.encode(s, add_special_tokens=False) if tokenizer is not None else []
            if len(ids) == 1:
                eos.append(int(ids[0]))
            else:
                longer.append(s)
        if eos:
            kw["eos_token_id"] = list(dict.fromkeys(eos))
        if longer:
            kw["stop_strings"] = longer
        return kw


@dataclass
class SampledSequence:
    """One completion.

    ``stop_reason`` is one of ``STOP_REASONS``; ``logprobs[i]`` is a list of ``(token, logprob)`` pairs (with
    ``logprobs=1``: exactly the sampled token's, so ``logprobs[i][0][1]`` is what GRPO uses as ``old_logps``);
    ``new_input_feature`` is the prompt plus the completion, ready to train on and to reward (it keeps the
    input's ``messages`` with the reply appended, and its ``user_data``); ``routed_experts`` is what a MoE
    sampler recorded (None elsewhere).
    """

    stop_reason: str | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[list[tuple[int, float]]] | None = None
    decoded: str | None = None
    new_input_feature: Any = None
    routed_experts: Any = None


@dataclass
class SampleResponse:
    """The completions for one prompt, and the prompt's own scores when asked for.

    ``prompt_logprobs``: one float per prompt token (None for the first); ``topk_prompt_logprobs``: per prompt
    token a list of ``(token, logprob)`` sorted descending (None for the first); ``prompt_token_ids``: the prompt.
    """

    sequences: list[SampledSequence] = field(default_factory=list)
    prompt_logprobs: list[Any] | None = None
    prompt_token_ids: list[int] | None = None
    topk_prompt_logprobs: list[Any] | None = None
