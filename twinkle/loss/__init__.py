"""Training losses. Each is called as ``loss(inputs, outputs, **kw) -> {'loss', 'num_tokens'}``."""

from twinkle.loss.base import Loss, selective_log_softmax
from twinkle.loss.cross_entropy import ChunkedCrossEntropyLoss, CrossEntropyLoss
from twinkle.loss.dpo import DPOLoss
from twinkle.loss.grpo import GRPOLoss
from twinkle.loss.mse import MSELoss

__all__ = [
    "ChunkedCrossEntropyLoss", "CrossEntropyLoss", "DPOLoss", "GRPOLoss", "Loss", "MSELoss", "selective_log_softmax"
]
