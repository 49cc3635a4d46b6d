"""Rewards for RL: each is called as ``reward(trajectories) -> list[float]`` (see ``base.py`` for what a
trajectory must carry)."""

from twinkle.reward._format import FormatReward
from twinkle.reward._gsm8k import GSM8KAccuracyReward, GSM8KFormatReward
from twinkle.reward._math import MathReward, math_equal
from twinkle.reward.base import Reward, completion_text, last_boxed

__all__ = [
    "FormatReward",
    "GSM8KAccuracyReward",
    "GSM8KFormatReward",
    "MathReward",
    "Reward",
    "completion_text",
    "last_boxed",
    "math_equal",
]
