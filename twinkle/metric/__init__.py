"""Training and evaluation metrics; ``model.calculate_metric()`` merges their string values."""

from twinkle.metric._accuracy import Accuracy
from twinkle.metric._completion_reward import CompletionRewardMetric
from twinkle.metric._dpo import DPOMetric
from twinkle.metric._grpo import GRPOMetric
from twinkle.metric._loss import LossMetric
from twinkle.metric._policy import CISPOMetric, EmbeddingMetric, GSPOMetric, PolicyMetric
from twinkle.metric._train import TrainMetric
from twinkle.metric.base import Metric

__all__ = [
    "Accuracy",
    "CISPOMetric",
    "CompletionRewardMetric",
    "DPOMetric",
    "EmbeddingMetric",
    "GRPOMetric",
    "GSPOMetric",
    "LossMetric",
    "Metric",
    "PolicyMetric",
    "TrainMetric",
]
