"""DPO with a LoRA adapter: prefer the right self-introduction over a wrong one. Runs without a GPU or a hub.

    python examples/dpo.py
    torchrun --nproc_per_node 2 examples/dpo.py             # dp=2 (gloo on the CPU); each rank gets whole pairs

Preference pairs come from the bundled self-cognition rows (``twinkle.assets.self_cognition_rows``): for each
question, *chosen* is the answer naming "twinkle LLM" by "ModelScope community", *rejected* the same answer naming
"ChatGPT" by "OpenAI". The dataset holds them interleaved (chosen, rejected, chosen, ...), which is what
``DPOLoss`` expects. The reference model is the base model itself: ``forward_only(..., disable_lora=True)`` runs it
with the adapter switched off, so no second copy of the weights is needed.

Pairs and data parallelism: every data rank receives a contiguous slice of each global batch, so the global
batch must be a multiple of 2 * data ranks (checked below) and rows are never shuffled (shuffle the pairs before
interleaving instead, as done here with a fixed seed).

Environment knobs (all optional): MODEL_ID, LR, PAIRS (number of preference pairs, cycling over the 80 bundled
questions), BATCH_SIZE (global rows, i.e. 2 x pairs per step), BETA, LOSS_TYPE (sigmoid, hinge, ipo, kto_pair),
LOG_EVERY (steps between printed metrics), MAX_STEPS, and from the platform TWINKLE_OUTPUT_DIR,
TWINKLE_METRICS_FILE.
"""

import os
import random

import torch
from peft import LoraConfig

import twinkle
from twinkle import DeviceGroup, DeviceMesh
from twinkle.assets import self_cognition_rows, tiny_model_path
from twinkle.dataloader import DataLoader
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.loss import DPOLoss
from twinkle.metric import DPOMetric
from twinkle.model import TransformersModel
from twinkle.preprocessor import SelfCognitionProcessor

MODEL_ID = os.environ.get("MODEL_ID") or str(tiny_model_path())
LR = float(os.environ.get("LR") or (5e-5 if os.environ.get("MODEL_ID") else 5e-3))
PAIRS = int(os.environ.get("PAIRS", "160"))  # 2 epochs of the 80 bundled questions
BATCH_SIZE = int(os.environ.get("BATCH_SIZE", "8"))  # global rows: 4 pairs per optimizer step
BETA = float(os.environ.get("BETA", "0.1"))
LOSS_TYPE = os.environ.get("LOSS_TYPE", "sigmoid")
LOG_EVERY = int(os.environ.get("LOG_EVERY", "5"))
MAX_STEPS = int(os.environ.get("MAX_STEPS", "0"))

WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1"))
DEVICE_TYPE = "cuda" if torch.cuda.is_available() else "cpu"


def preference_rows(pairs: int) -> list[dict]:
    """Interleaved chats: chosen (the right name and author), then rejected (a wrong one), per question."""
    right = SelfCognitionProcessor("twinkle LLM", "ModelScope community")
    wrong = SelfCognitionProcessor("ChatGPT", "OpenAI")
    questions = self_cognition_rows()
    order = [i % len(questions) for i in range(pairs)]
    random.Random(0).shuffle(order)  # shuffle pairs, never rows
    rows = []
    for i in order:
        rows.append(right.preprocess(questions[i]))
        rows.append(wrong.preprocess(questions[i]))
    return rows


def main() -> None:
    if BATCH_SIZE % (2 * WORLD_SIZE):
        raise SystemExit(
            f"BATCH_SIZE={BATCH_SIZE} must be a multiple of 2 x {WORLD_SIZE} data ranks so each rank gets whole "
            f"(chosen, rejected) pairs; use {2 * WORLD_SIZE * max(1, BATCH_SIZE // (2 * WORLD_SIZE))}"
        )
    # 1. devices: data parallel over every rank
    device_group = [DeviceGroup(name="default", ranks=WORLD_SIZE, device_type=DEVICE_TYPE)]
    device_mesh = DeviceMesh.from_sizes(dp_size=WORLD_SIZE, device_type=DEVICE_TYPE)
    twinkle.initialize(mode="local", groups=device_group, global_device_mesh=device_mesh)

    # 2. data: interleaved preference pairs -> template -> encode (labels on the answers only)
    dataset = Dataset(dataset_meta=DatasetMeta(data=preference_rows(PAIRS)))
    dataset.set_template("Template", model_id=MODEL_ID)
    dataset.encode()

    # 3. global batches of whole pairs; a short last batch is dropped (it could split a pair over ranks)
    dataloader = DataLoader(dataset=dataset, batch_size=BATCH_SIZE, min_batch_size=BATCH_SIZE)

    # 4. model, LoRA adapter, DPO loss and metric, optimizer, scheduler
    model = TransformersModel(model_id=MODEL_ID, remote_group="default")
    model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
    model.set_loss(DPOLoss, beta=BETA, loss_type=LOSS_TYPE)
    model.add_metric(DPOMetric, is_training=True, beta=BETA)
    model.set_optimizer(optimizer_cls="AdamW", lr=LR)
    model.set_lr_scheduler(
        scheduler_cls="CosineWarmupScheduler", num_warmup_steps=2, num_training_steps=len(dataloader)
    )

    # 5. the loop: reference logps from the base model (adapter off), then the DPO step on the same batch
    for step, batch in enumerate(dataloader):
        ref_outputs = model.forward_only(inputs=batch, disable_lora=True)
        model.forward_backward(inputs=batch, ref_outputs=ref_outputs)
        model.clip_grad_and_step()
        if (step + 1) % LOG_EVERY == 0:
            metric = model.calculate_metric(is_training=True)
            if twinkle.is_master():
                print(f"step {step + 1}: {metric}", flush=True)
        if MAX_STEPS and step + 1 >= MAX_STEPS:
            break
    path = model.save("last-checkpoint")
    if twinkle.is_master():
        print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
