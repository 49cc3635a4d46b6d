"""Self-cognition LoRA fine-tuning: the usage example of the twinkle README, runnable without a GPU or a hub.

    python examples/self_cognition.py
    torchrun --nproc_per_node 2 examples/self_cognition.py             # dp=2 (gloo on the CPU)
    FSDP_SIZE=2 torchrun --nproc_per_node 2 examples/self_cognition.py # FSDP2 over 2 ranks
    TWINKLE_MODE=ray python examples/self_cognition.py                 # Ray: one actor per rank (RAY_RANKS=2)

Changed from the README, as the machine requires: the model (the bundled tiny Qwen2 unless MODEL_ID is set), the
dataset (the bundled self-cognition rows unless DATASET_ID is set), the devices (CUDA when there is one, else the
CPU; a mesh sized from WORLD_SIZE, or from RAY_RANKS in Ray mode) and, for the tiny random model only, a higher
learning rate so its
loss visibly drops in a few seconds.

Environment knobs (all optional): MODEL_ID, DATASET_ID, LR, DATA_ROWS, BATCH_SIZE, FSDP_SIZE, LOG_EVERY (micro-
batches between printed metrics; the printed "step N" is the optimizer step, the number the platform's metrics
and charts show), SAVE_EVERY (optimizer steps between resumable checkpoints), MAX_STEPS (stop
after this many optimizer steps), TWINKLE_MODE (local or ray) with RAY_RANKS and RAY_ADDRESS, and from the
platform TWINKLE_OUTPUT_DIR, TWINKLE_METRICS_FILE,
TWINKLE_RESUME_FROM (a checkpoint of an earlier attempt to resume from).
"""

import os

import torch
from peft import LoraConfig

import twinkle
from twinkle import DeviceGroup, DeviceMesh
from twinkle.assets import self_cognition_path, tiny_model_path
from twinkle.dataloader import DataLoader
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.model import TransformersModel
from twinkle.preprocessor import SelfCognitionProcessor

MODEL_ID = os.environ.get("MODEL_ID") or str(tiny_model_path())
DATASET_ID = os.environ.get("DATASET_ID") or str(self_cognition_path())
LR = float(os.environ.get("LR") or (1e-4 if os.environ.get("MODEL_ID") else 5e-3))
DATA_ROWS = int(os.environ.get("DATA_ROWS", "320"))  # data_slice wraps: 320 rows = 4 epochs of the 80 bundled
BATCH_SIZE = int(os.environ.get("BATCH_SIZE", "8"))
LOG_EVERY = int(os.environ.get("LOG_EVERY", "20"))
SAVE_EVERY = int(os.environ.get("SAVE_EVERY", "0"))
MAX_STEPS = int(os.environ.get("MAX_STEPS", "0"))
GAS = 2  # gradient accumulation: micro-batches per optimizer step

# the one word that switches modes: under Ray the driver is not a rank, the group's RAY_RANKS actors are
MODE = os.environ.get("TWINKLE_MODE", "local")
WORLD_SIZE = int(os.environ.get("RAY_RANKS", "2")) if MODE == "ray" else int(os.environ.get("WORLD_SIZE", "1"))
FSDP_SIZE = int(os.environ.get("FSDP_SIZE", "1"))
DEVICE_TYPE = "cuda" if torch.cuda.is_available() else "cpu"


def main() -> None:
    # 1. devices: one group over every rank; dp (and optionally fsdp) over them
    device_group = [DeviceGroup(name="default", ranks=WORLD_SIZE, device_type=DEVICE_TYPE)]
    if FSDP_SIZE > 1:
        device_mesh = DeviceMesh.from_sizes(
            fsdp_size=FSDP_SIZE, dp_size=WORLD_SIZE // FSDP_SIZE, device_type=DEVICE_TYPE
        )
    else:
        device_mesh = DeviceMesh.from_sizes(dp_size=WORLD_SIZE, device_type=DEVICE_TYPE)
    twinkle.initialize(mode=MODE, groups=device_group, global_device_mesh=device_mesh)

    # 2. data: load, template, self-cognition rows -> chats, encode
    dataset = Dataset(dataset_meta=DatasetMeta(DATASET_ID, data_slice=range(DATA_ROWS)))
    dataset.set_template("Template", model_id=MODEL_ID)
    dataset.map(SelfCognitionProcessor("twinkle LLM", "ModelScope community"))
    dataset.encode()

    # 3. a global batch of BATCH_SIZE rows, split over the data ranks
    dataloader = DataLoader(dataset=dataset, batch_size=BATCH_SIZE, min_batch_size=BATCH_SIZE)

    # 4. model, LoRA adapter, optimizer, scheduler
    model = TransformersModel(model_id=MODEL_ID, remote_group="default")
    model.add_adapter_to_model(
        "default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"), gradient_accumulation_steps=GAS
    )
    model.set_optimizer(optimizer_cls="AdamW", lr=LR)
    model.set_lr_scheduler(
        scheduler_cls="CosineWarmupScheduler", num_warmup_steps=5, num_training_steps=len(dataloader)
    )

    start = 0
    resume_from = os.environ.get("TWINKLE_RESUME_FROM")
    if resume_from:
        state = model.resume_from_checkpoint(resume_from)
        dataloader.skip_consumed_samples(state["consumed_train_samples"])
        start = state["cur_step"]
        print(f"resumed from {resume_from}: {state}", flush=True)

    # 5. the loop: one optimizer step every GAS micro-batches. "step" in the log, the metrics and the platform's
    # charts is the optimizer step (what calculate_metric records), not the micro-batch
    for micro_batch, batch in enumerate(dataloader, start):
        model.forward_backward(inputs=batch)
        model.clip_grad_and_step()
        optimizer_steps, window_done = divmod(micro_batch + 1, GAS)
        if (micro_batch + 1) % LOG_EVERY == 0:
            metric = model.calculate_metric(is_training=True)
            if twinkle.is_master():
                print(f"step {optimizer_steps}: {metric}", flush=True)
        if SAVE_EVERY and window_done == 0 and optimizer_steps % SAVE_EVERY == 0:
            model.save(save_optimizer=True)
        if MAX_STEPS and window_done == 0 and optimizer_steps >= MAX_STEPS:
            break
    path = model.save("last-checkpoint")
    if twinkle.is_master():
        print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
