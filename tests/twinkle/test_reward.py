"""Rewards: (trajectories) -> list[float], on trajectories shaped the way the preprocessors make them."""

from __future__ import annotations

import pytest

from twinkle.data_format import set_user_data
from twinkle.preprocessor import CompetitionMathGRPOProcessor, GSM8KProcessor
from twinkle.reward import FormatReward, GSM8KAccuracyReward, GSM8KFormatReward, MathReward, math_equal


def gsm8k(reply: str | None, answer: str = "Natalia sold 48/2 = 24 clips.\n#### 72") -> dict:
    traj = GSM8KProcessor().preprocess({"question": "How many clips?", "answer": answer})
    if reply is not None:
        traj["messages"].append({"role": "assistant", "content": reply})
    return traj


def math_traj(reply: str, solution: str) -> dict:
    traj = CompetitionMathGRPOProcessor().preprocess({"problem": "Compute.", "solution": solution})
    traj["messages"].append({"role": "assistant", "content": reply})
    return traj


def test_gsm8k_accuracy_reads_last_box_or_hashes_within_tolerance():
    replies = [
        "so \\boxed{72}",                    # box
        "first \\boxed{70} then \\boxed{72}",  # the last box wins
        "\\boxed{72} then \\boxed{70}",
        "the answer\n#### 72",               # no box: ####
        "#### 72.000001",                    # within 1e-5
        "#### 72.001",                       # outside
        "\\boxed{\\$72.00}",                 # currency and decimals
        "72",                                 # no marked answer
        "\\boxed{seventy-two}",
    ]
    assert GSM8KAccuracyReward()([gsm8k(r) for r in replies]) == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_gsm8k_accuracy_uses_the_last_assistant_message_and_comma_ground_truth():
    traj = gsm8k("#### 1000", answer="... #### 1,234")
    traj["messages"].append({"role": "user", "content": "again"})
    traj["messages"].append({"role": "assistant", "content": "\\boxed{1,234}"})
    assert GSM8KAccuracyReward()([traj]) == [1.0]
    assert GSM8KAccuracyReward()([gsm8k(None)]) == [0.0]  # no assistant message: empty completion


def test_gsm8k_accuracy_without_ground_truth_says_how_to_add_it():
    traj = {"messages": [{"role": "assistant", "content": "\\boxed{1}"}]}
    with pytest.raises(ValueError, match="set_user_data"):
        GSM8KAccuracyReward()([traj])
    set_user_data(traj, "ground_truth", "1")
    assert GSM8KAccuracyReward()([traj]) == [1.0]


def test_gsm8k_format():
    replies = ["\\boxed{3}", "#### 3", "3", "\\boxed{}", "\\boxed{3"]
    assert GSM8KFormatReward()([gsm8k(r) for r in replies]) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_format_reward_needs_think_then_answer():
    def t(content: str, **extra: str) -> dict:
        return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content, **extra}]}

    trajs = [
        t("<think>a\nb</think>\n<answer>5</answer>"),
        t("  <think>a</think><answer>5</answer>\n"),
        t("<answer>5</answer><think>a</think>"),     # wrong order
        t("<think>a</think>"),                         # no answer
        t("<answer>5</answer>"),                       # no think
        t("hi <think>a</think><answer>5</answer>"),    # text outside the blocks
        t("<answer>5</answer>", reasoning_content="a"),  # the template split <think> off
    ]
    assert FormatReward()(trajs) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("answer", "reference", "equal"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac12", "\\frac{1}{2}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("x^2+2x+1", "(x+1)^2", True),
        ("\\frac{\\pi}{2}", "\\pi/2", True),
        ("(1, 2)", "(1,2)", True),
        ("(1, 2)", "(2, 1)", False),
        ("10^\\circ", "10", True),
        ("x = 3", "3", True),
        ("3", "4", False),
        ("\\sqrt{2}", "1.41", False),
        ("", "0", False),
        ("__import__('os').system('true')", "0", False),  # never evaluated
    ],
)
def test_math_equal(answer, reference, equal):
    assert math_equal(answer, reference) is equal


def test_math_reward_reads_boxed_solution_or_ground_truth():
    solution = "We get $\\frac{2}{4}$, so the answer is $\\boxed{\\frac{1}{2}}$."
    trajs = [
        math_traj("so \\boxed{0.5}", solution),
        math_traj("<think>x</think><answer>\\frac12</answer>", solution),
        math_traj("so \\boxed{2}", solution),
        math_traj("no answer here", solution),
    ]
    assert MathReward()(trajs) == [1.0, 1.0, 0.0, 0.0]
    gt = set_user_data({"messages": [{"role": "assistant", "content": "\\boxed{6}"}]}, "ground_truth", "2\\cdot 3")
    assert MathReward()([gt]) == [1.0]
    with pytest.raises(ValueError, match="ground_truth"):
        MathReward()([{"messages": []}])


def test_reward_rejects_a_single_trajectory_with_a_hint():
    with pytest.raises(TypeError, match="list of trajectories"):
        GSM8KFormatReward()(gsm8k("#### 1"))
