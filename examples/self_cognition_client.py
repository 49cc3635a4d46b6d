"""The self-cognition example (examples/self_cognition.py) written the client way: the model lives on a
twinkle-server, the data stays here.

    twinkle-server --model "$(twinkle-assets tiny-model)" --name tiny --max-loras 4 --port 8000 &
    TWINKLE_SERVER_URL=http://127.0.0.1:8000 TWINKLE_SERVER_TOKEN=my-key python examples/self_cognition_client.py

Differences from the local script: ``init_twinkle_client`` instead of a device layout; ``MultiLoraTransformersModel``
from ``twinkle_client.model`` names the server's model (``MODEL_NAME``, default ``tiny``); class names are sent as
strings; ``save`` returns a ``twinkle://`` URI in the server's storage. ``SEED`` fixes the adapter's initial
weights (``init_seed``): the same seed in the local script (``torch.manual_seed(SEED)`` before
``add_adapter_to_model``) gives the same per-step losses.
"""

import os

from peft import LoraConfig

import twinkle
from twinkle.assets import self_cognition_path, tiny_model_path
from twinkle.dataloader import DataLoader
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.preprocessor import SelfCognitionProcessor
from twinkle_client import init_twinkle_client
from twinkle_client.model import MultiLoraTransformersModel

MODEL_NAME = os.environ.get("MODEL_NAME", "tiny")
TOKENIZER = os.environ.get("MODEL_ID") or str(tiny_model_path())  # local copy of the tokenizer for encoding
DATASET_ID = os.environ.get("DATASET_ID") or str(self_cognition_path())
LR = float(os.environ.get("LR", "5e-3"))
DATA_ROWS = int(os.environ.get("DATA_ROWS", "320"))
BATCH_SIZE = int(os.environ.get("BATCH_SIZE", "8"))
MAX_STEPS = int(os.environ.get("MAX_STEPS", "0"))
SEED = int(os.environ.get("SEED", "0"))


def dataloader() -> DataLoader:
    dataset = Dataset(dataset_meta=DatasetMeta(DATASET_ID, data_slice=range(DATA_ROWS)))
    dataset.set_template("Template", model_id=TOKENIZER)
    dataset.map(SelfCognitionProcessor("twinkle LLM", "ModelScope community"))
    dataset.encode()
    return DataLoader(dataset=dataset, batch_size=BATCH_SIZE, min_batch_size=BATCH_SIZE)


def train(max_steps: int = MAX_STEPS) -> tuple[list[float], str]:
    """Train; returns the per-micro-batch losses and the last checkpoint's twinkle:// URI."""
    twinkle.initialize(mode="local")  # seeds the local data order, as in the local script
    loader = dataloader()
    model = MultiLoraTransformersModel(MODEL_NAME)
    model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"),
                               gradient_accumulation_steps=2, init_seed=SEED)
    model.set_optimizer(optimizer_cls="AdamW", lr=LR)
    model.set_lr_scheduler(scheduler_cls="CosineWarmupScheduler", num_warmup_steps=5,
                           num_training_steps=len(loader))
    losses = []
    for step, batch in enumerate(loader):
        losses.append(float(model.forward_backward(inputs=batch)["loss"]))
        model.clip_grad_and_step()
        if max_steps and (step + 1) // 2 >= max_steps and (step + 1) % 2 == 0:
            break
    return losses, model.save("last-checkpoint")["twinkle_path"]


def main() -> None:
    init_twinkle_client()  # TWINKLE_SERVER_URL, TWINKLE_SERVER_TOKEN
    losses, uri = train()
    print(f"losses: {[round(x, 4) for x in losses]}\nsaved {uri}", flush=True)


if __name__ == "__main__":
    main()
