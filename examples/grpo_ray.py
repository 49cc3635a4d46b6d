"""GRPO the upstream way (cookbook/rl/grpo/grpo.py): a model group and a sampler group under Ray, a weight sync
every step, GSM8K rewards, ``GRPOAdvantage`` and ``GRPOLoss``.

    python examples/grpo_ray.py                           # CPU groups: TorchSampler + the gloo checkpoint engine
    DEVICE=GPU MODEL_ID=ms://Qwen/Qwen2.5-0.5B-Instruct python examples/grpo_ray.py   # vLLMSampler + NCCL [*]

[*] The GPU path (vLLMSampler, NCCLCheckpointEngine) is written against the contract but has never run: this
project has had no GPU machine. The CPU path is what CI runs.

Each step: ``CheckpointEngineManager.sync_weights`` puts the policy's current weights into every sampler replica
(the LoRA weights with ``merge_and_sync=False``, all weights when training in full); each prompt is repeated
NUM_GENERATIONS times and sampled once per copy with ``logprobs=1`` (the sampled token's log-prob: the
``old_logps``); ``GSM8KAccuracyReward + GSM8KFormatReward`` score the reply the sampler appended to each
trajectory's ``messages`` against its ``user_data['ground_truth']``; ``GRPOAdvantage`` normalises within each
group of NUM_GENERATIONS consecutive samples; one ``forward_backward`` with ``GRPOLoss`` and a step.

The data are GSM8K-shaped rows (question, and an answer whose final line is ``#### <number>``) given inline, or
read from DATA (a .jsonl file with ``question`` and ``answer`` per line, e.g. GSM8K's ``main/train``). A random
tiny model never writes ``####`` on its own, so the test first teaches the bundled one the answer format (a short
supervised warm start, as a real recipe starts from an instruct model) and then lets GRPO learn the numbers.

Environment knobs: MODEL_ID, DATA, DEVICE (CPU|GPU), MODEL_RANKS, SAMPLER_RANKS, LORA (1/0), LR, STEPS,
BATCH_SIZE (prompts per step), NUM_GENERATIONS, MAX_TOKENS, TEMPERATURE, LOG_EVERY, and TWINKLE_OUTPUT_DIR.
"""

import json
import os
import statistics

from peft import LoraConfig

import twinkle
from twinkle import DeviceGroup, DeviceMesh
from twinkle.advantage import GRPOAdvantage
from twinkle.assets import tiny_model_path
from twinkle.checkpoint_engine import CheckpointEngineManager
from twinkle.data_format import SamplingParams, set_user_data
from twinkle.dataloader import DataLoader
from twinkle.metric import CompletionRewardMetric
from twinkle.model import TransformersModel
from twinkle.reward import GSM8KAccuracyReward, GSM8KFormatReward

MODEL_ID = os.environ.get("MODEL_ID") or str(tiny_model_path())
DATA = os.environ.get("DATA")
DEVICE = os.environ.get("DEVICE", "CPU").upper()
MODEL_RANKS = int(os.environ.get("MODEL_RANKS", "1"))
SAMPLER_RANKS = int(os.environ.get("SAMPLER_RANKS", "1"))
LORA = os.environ.get("LORA", "1" if os.environ.get("MODEL_ID") else "0") == "1"
LR = float(os.environ.get("LR") or (1e-5 if LORA else 3e-3))
STEPS = int(os.environ.get("STEPS", "30"))
BATCH_SIZE = int(os.environ.get("BATCH_SIZE", "2"))
NUM_GENERATIONS = int(os.environ.get("NUM_GENERATIONS", "8"))
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "8"))
TEMPERATURE = float(os.environ.get("TEMPERATURE", "1.0"))
LOG_EVERY = int(os.environ.get("LOG_EVERY", "10"))
SYSTEM = "Answer with the final number after ####."

# GSM8K-shaped rows: a question and a worked answer whose last line is "#### <number>"
INLINE_ROWS = [
    {"question": "Tom has 2 apples and buys 3 more. How many apples does he have?", "answer": "2 + 3 = 5\n#### 5"},
    {"question": "A box holds 9 pens. 2 are taken out. How many pens are left?", "answer": "9 - 2 = 7\n#### 7"},
    {"question": "Ann reads 4 pages a day for 2 days. How many pages does she read?", "answer": "4 * 2 = 8\n#### 8"},
    {"question": "There are 6 birds and 3 fly away. How many birds remain?", "answer": "6 - 3 = 3\n#### 3"},
]


def gsm8k_rows() -> list[dict]:
    """Trajectories as GSM8KProcessor makes them: system + user messages, ``user_data['ground_truth']``."""
    if DATA:
        with open(DATA, encoding="utf-8") as fh:
            raw = [json.loads(line) for line in fh if line.strip()]
    else:
        raw = INLINE_ROWS
    rows = []
    for item in raw:
        row = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": item["question"]}]}
        rows.append(set_user_data(row, "ground_truth", item["answer"].split("####")[-1].strip()))
    return rows


def make_sampler(sampler_mesh: DeviceMesh):
    if DEVICE == "GPU":
        from twinkle.sampler import vLLMSampler

        return vLLMSampler(MODEL_ID, engine_args={"gpu_memory_utilization": 0.8, "max_lora_rank": 32,
                                                  "enable_lora": LORA}, device_mesh=sampler_mesh,
                           remote_group="sampler")
    from twinkle.sampler import TorchSampler

    return TorchSampler(MODEL_ID, device_mesh=sampler_mesh, remote_group="sampler")


def main() -> None:
    device_type = "cuda" if DEVICE == "GPU" else "cpu"
    groups = [
        DeviceGroup("model", list(range(MODEL_RANKS)), DEVICE),
        DeviceGroup("sampler", list(range(MODEL_RANKS, MODEL_RANKS + SAMPLER_RANKS)), DEVICE),
    ]
    model_mesh = DeviceMesh.from_sizes(world_size=MODEL_RANKS, dp_size=MODEL_RANKS, device_type=device_type)
    sampler_mesh = DeviceMesh.from_sizes(world_size=SAMPLER_RANKS, dp_size=SAMPLER_RANKS, device_type=device_type)
    total = MODEL_RANKS + SAMPLER_RANKS
    twinkle.initialize(mode="ray", nproc_per_node=total, ncpu_proc_per_node=total, groups=groups,
                       lazy_collect=False)

    model = TransformersModel(model_id=MODEL_ID, device_mesh=model_mesh, remote_group="model")
    if LORA:
        model.add_adapter_to_model("default", LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05,
                                                         target_modules="all-linear"))
    model.set_optimizer("AdamW", lr=LR)
    model.set_lr_scheduler("CosineAnnealingLR", T_max=STEPS, eta_min=0)
    model.set_loss("GRPOLoss", epsilon=0.2)
    model.set_processor("InputProcessor")
    model.set_template("Template", model_id=MODEL_ID)

    sampler = make_sampler(sampler_mesh)
    sampler.set_template("Template", model_id=MODEL_ID, max_length=400)
    ckpt = CheckpointEngineManager(model, sampler)

    dataloader = DataLoader(dataset=gsm8k_rows, batch_size=BATCH_SIZE, min_batch_size=BATCH_SIZE, shuffle=True)
    accuracy, answer_format, advantage = GSM8KAccuracyReward(), GSM8KFormatReward(), GRPOAdvantage()
    params = SamplingParams(max_tokens=MAX_TOKENS, num_samples=1, logprobs=1, temperature=TEMPERATURE)
    step, window = 0, []
    while step < STEPS:
        for batch in dataloader:
            if step >= STEPS:
                break
            ckpt.sync_weights(merge_and_sync=not LORA)  # LoRA: the adapter; full training: every weight
            sampler.reset_prefix_cache()
            expanded = [row for row in batch for _ in range(NUM_GENERATIONS)]
            sequences = [seq for response in sampler.sample(expanded, params) for seq in response.sequences]
            features = [seq.new_input_feature for seq in sequences]
            old_logps = [[lp[0][1] for lp in seq.logprobs] for seq in sequences]
            acc, fmt = accuracy(features), answer_format(features)
            rewards = [a + f for a, f in zip(acc, fmt, strict=True)]
            metric = CompletionRewardMetric(rewards={"accuracy": acc, "format": fmt, "total": rewards},
                                            completion_lengths=[len(seq.tokens) for seq in sequences])
            advantages = advantage(rewards, num_generations=NUM_GENERATIONS, scale="group")
            model.forward_backward(inputs=features, old_logps=old_logps, advantages=advantages)
            model.clip_grad_and_step()
            step += 1
            window.append(statistics.fmean(rewards))
            if step % LOG_EVERY == 0:
                values = metric.calculate()
                print(f"step {step}: mean reward {statistics.fmean(window):.3f} "
                      f"accuracy {values.get('train/accuracy_reward')} format {values.get('train/format_reward')} "
                      f"{model.calculate_metric(is_training=True)}", flush=True)
                window = []
    path = model.save("last-checkpoint")
    print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
