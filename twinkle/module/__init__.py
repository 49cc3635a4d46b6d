"""Training modules beside the model: learning-rate schedulers (``twinkle.module.scheduler``)."""

from twinkle.module import scheduler

__all__ = ["scheduler"]
