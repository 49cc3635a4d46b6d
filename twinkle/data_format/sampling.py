"""Sampling parameters and results (used by samplers and RL loops)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twinkle.errors import ConfigError


@dataclass
class SamplingParams:
    """How to sample completions.

    Args:
        max_tokens: new tokens per completion (``None``: up to the model's limit; 0: prompt log-probs only).
        temperature: >= 0; 0 means greedy.
        top_k: -1 (off) or >= 1.
        top_p: in (0, 1].
        repetition_penalty: > 0.
        logprobs: how many log-probabilities to return per token (``None``: none).
        num_samples: completions per prompt, >= 1.
        stop: strings that end a completion.
        seed: sampling seed.

    Raises:
        ConfigError (a ValueError): a value outside its range; the message names the field and the range.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    num_samples: int = 1
    stop: list[str] | str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens is not None and self.max_tokens < 0:
            problems.append(f"max_tokens must be >= 0 or None, got {self.max_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k != -1 and self.top_k < 1:
            problems.append(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.logprobs is not None and self.logprobs < 0:
            problems.append(f"logprobs must be >= 0 or None, got {self.logprobs}")
        if self.num_samples < 1:
            problems.append(f"num_samples must be >= 1, got {self.num_samples}")
        if problems:
            raise ConfigError("invalid SamplingParams: " + "; ".join(problems))
        if isinstance(self.stop, str):
            self.stop = [self.stop]


@dataclass
class SampledSequence:
    """One completion: why it stopped, its tokens, ``logprobs[i] = [(token, logprob), ...]`` (the sampled first),
    the decoded text, and ``new_input_feature`` (the prompt plus the completion, ready to train on)."""

    stop_reason: str | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[list[tuple[int, float]]] | None = None
    decoded: str | None = None
    new_input_feature: Any = None


@dataclass
class SampleResponse:
    """The completions for one prompt, and the prompt's own log-probabilities when asked for."""

    sequences: list[SampledSequence] = field(default_factory=list)
    prompt_logprobs: list[Any] | None = None
