"""GRPO on the CPU: sample with TorchSampler, score, group-relative advantages, GRPOLoss.

    python examples/grpo.py

The loop every GRPO recipe has, small enough for 2 CPU cores: each step the sampler takes the policy's current
weights (``receive_weights``: the LoRA adapter, or every weight when training in full), draws NUM_GENERATIONS
completions for each of PROMPTS_PER_STEP self-cognition
questions, a reward scores them, ``GRPOAdvantage`` turns the scores into advantages within each group, and one
``forward_backward`` with ``GRPOLoss`` (given the sampler's log-probabilities as ``old_logps``) updates the policy.

The bundled model is tiny and random, so the reward is one it can learn in a minute: the share of completion
tokens that are digits. Swap in ``twinkle.reward.GSM8KAccuracyReward`` and GSM8K-style data (MODEL_ID, a real
model, LoRA) for the real thing. Environment knobs: MODEL_ID, LORA (1/0), LR, STEPS, PROMPTS_PER_STEP,
NUM_GENERATIONS, MAX_TOKENS, LOG_EVERY, and TWINKLE_OUTPUT_DIR / TWINKLE_METRICS_FILE from the platform.
"""

import json
import os
import statistics

from peft import LoraConfig

import twinkle
from twinkle.advantage import GRPOAdvantage
from twinkle.assets import self_cognition_path, tiny_model_path
from twinkle.data_format import SamplingParams
from twinkle.model import TransformersModel
from twinkle.sampler import TorchSampler

MODEL_ID = os.environ.get("MODEL_ID") or str(tiny_model_path())
LR = float(os.environ.get("LR") or (1e-5 if os.environ.get("MODEL_ID") else 3e-3))
STEPS = int(os.environ.get("STEPS", "40"))
PROMPTS_PER_STEP = int(os.environ.get("PROMPTS_PER_STEP", "2"))
NUM_GENERATIONS = int(os.environ.get("NUM_GENERATIONS", "8"))
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "12"))
LOG_EVERY = int(os.environ.get("LOG_EVERY", "10"))
# LoRA for a real model; the tiny random model's near-uniform output head is out of LoRA's reach ('all-linear'
# leaves lm_head alone), so it is trained in full
LORA = os.environ.get("LORA", "1" if os.environ.get("MODEL_ID") else "0") == "1"


def digit_share(text: str) -> float:
    """The reward: the share of the completion's non-space characters that are digits."""
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def questions() -> list[dict]:
    """The bundled self-cognition questions, as one-message chats (the sampler's template adds the prompt)."""
    with open(self_cognition_path(), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [{"messages": [{"role": "user", "content": row["query"]}]} for row in rows]


def main() -> None:
    twinkle.initialize(mode="local", seed=42)
    prompts = questions()

    model = TransformersModel(model_id=MODEL_ID)
    if LORA:
        model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
    model.set_loss("GRPOLoss", epsilon=0.2, beta=0.0)
    model.add_metric("GRPOMetric", is_training=True)
    model.set_optimizer(optimizer_cls="AdamW", lr=LR)

    sampler = TorchSampler(MODEL_ID)
    sampler.set_template("Template", max_length=256)
    advantage = GRPOAdvantage()
    rewards_seen: list[float] = []
    for step in range(STEPS):
        sampler.receive_weights(model)  # the policy being trained samples its own completions
        batch = [prompts[(step * PROMPTS_PER_STEP + i) % len(prompts)] for i in range(PROMPTS_PER_STEP)]
        params = SamplingParams(max_tokens=MAX_TOKENS, num_samples=NUM_GENERATIONS, temperature=1.0, logprobs=0,
                                seed=step)
        sequences = [seq for response in sampler.sample(batch, params) for seq in response.sequences]
        rewards = [digit_share(seq.decoded) for seq in sequences]
        model.forward_backward(
            inputs=[seq.new_input_feature for seq in sequences],
            advantages=advantage(rewards, num_generations=NUM_GENERATIONS),
            old_logps=[[entry[0][1] for entry in seq.logprobs] for seq in sequences],
        )
        model.clip_grad_and_step()
        rewards_seen.append(statistics.fmean(rewards))
        if (step + 1) % LOG_EVERY == 0:
            window = rewards_seen[-LOG_EVERY:]
            print(f"step {step + 1}: mean reward {statistics.fmean(window):.3f} "
                  f"{model.calculate_metric(is_training=True)}", flush=True)
    path = model.save("last-checkpoint")
    print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
