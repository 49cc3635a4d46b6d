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


_NOT_BUILT = {
    "MultiModalAccuracyReward": "the multimodal accuracy reward (math_verify and <answer> matching)",
    "OlympiadBenchAccuracyReward": "the OlympiadBench rewards (boxed-answer normalisation and scoring)",
    "OlympiadBenchFormatReward": "the OlympiadBench rewards (boxed-answer normalisation and scoring)",
    "OlympiadBenchQualityReward": "the OlympiadBench rewards (boxed-answer normalisation and scoring)",
}


def __getattr__(name: str):
    if name in _NOT_BUILT:
        from twinkle.errors import NotBuiltError

        raise NotBuiltError(f"twinkle.reward.{name}: {_NOT_BUILT[name]} is not built in Twinkle Commons; use "
                            f"MathReward / GSM8KAccuracyReward or your own Reward subclass")
    raise AttributeError(f"module 'twinkle.reward' has no attribute {name!r}")
