"""Advantage estimators for RL: ``advantage(rewards, num_generations=1, scale='group') -> Tensor``."""

from twinkle.advantage._grpo import GRPOAdvantage
from twinkle.advantage._rloo import RLOOAdvantage
from twinkle.advantage.base import SCALES, Advantage

__all__ = ["SCALES", "Advantage", "GRPOAdvantage", "RLOOAdvantage"]
