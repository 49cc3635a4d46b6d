"""Rewards for RL: each is called as ``reward(trajectories) -> list[float]`` (see ``base.py`` for what a
trajectory must carry)."""

from twinkle.errors import not_built_attributes
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


_OLYMPIAD = "the OlympiadBench rewards (boxed-answer normalisation and scoring)"
__getattr__ = not_built_attributes("twinkle.reward", {
    name: f"twinkle.reward.{name}: {feature} is not built in Twinkle Commons; use MathReward / GSM8KAccuracyReward "
    f"or your own Reward subclass"
    for name, feature in {
        "MultiModalAccuracyReward": "the multimodal accuracy reward (math_verify and <answer> matching)",
        "OlympiadBenchAccuracyReward": _OLYMPIAD,
        "OlympiadBenchFormatReward": _OLYMPIAD,
        "OlympiadBenchQualityReward": _OLYMPIAD,
    }.items()
})
