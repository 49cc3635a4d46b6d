"""The sampler interfaces: ``Sampler`` (what an RL loop calls) and ``BaseSamplerEngine`` (an async backend).

``TorchSampler`` (any device) and ``vLLMSampler`` (CUDA) implement ``Sampler`` with the same ``sample`` inputs and
outputs, so a GRPO script switches between them by changing one line.
"""

from __future__ import annotations

import abc
import copy
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from twinkle.errors import TemplateError

__all__ = ["BaseSamplerEngine", "Sampler", "complete_feature", "is_trajectory"]

# the token fields a completion replaces in the prompt's feature; every other key of the input is kept
TOKEN_FIELDS = ("input_ids", "labels", "attention_mask", "position_ids", "completion_mask", "length")


def complete_feature(feature: Mapping, prompt: list[int], completion: list[int], text: str | None) -> dict[str, Any]:
    """The prompt's feature (deep-copied, every extra key kept) with prompt + completion as its tokens, and the reply
    appended to ``messages`` as an assistant turn (what ``GSM8K*Reward`` reads).

    Labels are rolled left by one (as the template makes them): ``labels[i]`` is the target of token ``i``, so the
    last prompt position carries the first completion token and the final position carries -100.
    """
    out = copy.deepcopy({k: v for k, v in feature.items() if k not in TOKEN_FIELDS})
    ids = np.asarray(list(prompt) + list(completion), dtype=np.int64)
    out.update(
        input_ids=ids,
        labels=np.asarray([-100] * (len(prompt) - 1) + list(completion) + [-100], dtype=np.int64),
        attention_mask=np.ones(len(ids), dtype=np.int64),
        position_ids=np.arange(len(ids), dtype=np.int64),
        completion_mask=np.asarray([0] * len(prompt) + [1] * len(completion), dtype=np.int64),
        length=len(ids),
    )
    if text is not None and isinstance(out.get("messages"), list):
        out["messages"].append({"role": "assistant", "content": text})
    return out


def is_trajectory(item: Any) -> bool:
    """An input is a Trajectory (to encode with the template) when it has neither ``input_ids`` nor
    ``input_embedding``."""
    return isinstance(item, Mapping) and "input_ids" not in item and "input_embedding" not in item


class Sampler(abc.ABC):
    """Generates completions for an RL loop.

    Subclasses set ``self.model_id`` and ``self.template`` (None until ``set_template``).
    """

    model_id: str
    template: Any = None

    @abc.abstractmethod
    def sample(self, inputs: Any, sampling_params: Any = None, adapter_name: str = "", *, num_samples: int = 1):
        """One ``SampleResponse`` per input (InputFeatures or Trajectories), each with ``num_samples`` sequences."""

    @abc.abstractmethod
    def apply_patch(self, patch_cls: Any, **kwargs: Any) -> None:
        """Apply a ``twinkle.patch`` patch to the sampling model."""

    def set_template(self, template_cls: Any = "Template", **kwargs: Any) -> None:
        """A ``twinkle.template`` template (name, class or instance); ``model_id`` defaults to the sampler's."""
        import twinkle.template as templates
        from twinkle.template import Template
        from twinkle.utils.construct import construct_class

        if isinstance(template_cls, str):
            kwargs.setdefault("model_id", self._template_model_id())
            self.template = construct_class(template_cls, Template, templates, kind="template", **kwargs)
        elif inspect.isclass(template_cls):
            kwargs.setdefault("model_id", self._template_model_id())
            self.template = template_cls(**kwargs)
        else:
            self.template = template_cls

    def _template_model_id(self) -> str:
        return getattr(self, "model_dir", None) or self.model_id

    def encode_trajectory(self, trajectory: Any, adapter_name: str = "", add_generation_prompt: bool = True):
        """The template's encoding of ``trajectory`` as a generation prompt, without ``labels``.

        Raises:
            TemplateError: no template was set (``set_template`` first).
        """
        if self.template is None:
            raise TemplateError(
                "this input is a Trajectory (it has no input_ids): call sampler.set_template('Template') first, or "
                "pass encoded InputFeatures (dicts with input_ids)"
            )
        encoded = self.template.encode(trajectory, add_generation_prompt=add_generation_prompt)
        if isinstance(encoded, list):
            raise TemplateError(
                f"the template split the prompt into {len(encoded)} chunks; use truncation_strategy='left' or "
                f"'raise', or a shorter prompt"
            )
        encoded = dict(encoded)
        encoded.pop("labels", None)
        return encoded

    def decode_response(self, token_ids: Any, **kwargs: Any) -> str:
        """The text of ``token_ids`` (special tokens skipped unless ``skip_special_tokens=False``)."""
        kwargs.setdefault("skip_special_tokens", True)
        if self.template is not None:
            return self.template.decode(list(token_ids), **kwargs)
        return self.tokenizer.decode(list(token_ids), **kwargs)  # type: ignore[attr-defined]

    @staticmethod
    def prompt_feature(item: Mapping, encoded: Mapping | None) -> dict[str, Any]:
        """The prompt's feature with every extra key of the input kept (``messages``, ``user_data``, ...)."""
        feature = copy.deepcopy(dict(item))
        if encoded is not None:
            feature.update(encoded)
        return feature

    def add_adapter_to_sampler(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} does not add adapters this way: sample(..., adapter_path=folder) loads a saved "
            f"adapter, and CheckpointEngineManager.sync_weights(merge_and_sync=False) syncs the trainer's LoRA"
        )


class BaseSamplerEngine(abc.ABC):
    """An async generation backend (``VLLMEngine``) that a ``Sampler`` drives."""

    @abc.abstractmethod
    async def sample(
        self,
        prompt_token_ids: list[int],
        sampling_params: Any = None,
        *,
        num_samples: int = 1,
        logprobs: bool = True,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        adapter_uri: str | None = None,
        request_id: str | None = None,
        images: Any = None,
        videos: Any = None,
    ) -> Any:
        """Sample completions of one prompt; returns a ``SampleResponse``."""

    @abc.abstractmethod
    def get_tokenizer(self) -> Any:
        """The engine's tokenizer."""

    async def update_weights(  # noqa: B027 - an optional hook: engines without weight updates keep the no-op
        self, weights: Any, adapter_name: str | None = None, **kwargs: Any
    ) -> None:
        """Load new weights (a ``(name, tensor)`` iterable); the default does nothing."""

    async def sleep(self, level: int = 1) -> None:  # noqa: B027 - optional hook
        """Free device memory between rollouts; the default does nothing."""

    async def wake_up(self, tags: Any = None) -> None:  # noqa: B027 - optional hook
        """Take the memory back; the default does nothing."""

    def save_weights_for_sampler(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} does not save weights for a sampler; sync them with CheckpointEngineManager"
        )
