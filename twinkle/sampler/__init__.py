"""Samplers: generate completions for RL loops.

* ``Sampler`` / ``BaseSamplerEngine``: the interfaces.
* ``TorchSampler``: plain ``transformers`` decoding, CPU or GPU (tested in CI).
* ``vLLMSampler`` / ``VLLMEngine``: vLLM on NVIDIA GPUs (``pip install 'twinkle-commons[vllm]'``; never run in this
  project, which has no GPU machine). Imported lazily: ``import twinkle.sampler`` does not import vLLM.
"""

from typing import Any

from twinkle.sampler.base import BaseSamplerEngine, Sampler
from twinkle.sampler.torch_sampler import TorchSampler

__all__ = ["BaseSamplerEngine", "Sampler", "TorchSampler", "VLLMEngine", "vLLMSampler"]


def __getattr__(name: str) -> Any:
    if name in ("vLLMSampler", "VLLMEngine"):
        from twinkle.sampler import vllm_sampler

        return getattr(vllm_sampler, name)
    raise AttributeError(f"module 'twinkle.sampler' has no attribute {name!r}")
