"""Samplers: generate completions for RL loops (``TorchSampler``: plain ``transformers`` decoding, CPU or GPU)."""

from twinkle.sampler.torch_sampler import TorchSampler

__all__ = ["TorchSampler"]
