"""Child script of test_ulysses.py: a few full-parameter SFT steps; prints one JSON line of per-step losses.

    python tests/twinkle/sp_train.py none                       # one process, the reference
    torchrun --nproc_per_node 2 tests/twinkle/sp_train.py dp    # Ulysses sp=2 over a dp mesh (DDP)
    torchrun --nproc_per_node 2 tests/twinkle/sp_train.py fsdp  # Ulysses sp=2 with FSDP2
"""

import json
import os
import sys

import torch

import twinkle
from twinkle import DeviceMesh
from twinkle.assets import self_cognition_path, tiny_model_path
from twinkle.dataloader import DataLoader
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.model import TransformersModel
from twinkle.preprocessor import SelfCognitionProcessor

layout = sys.argv[1]
world = int(os.environ.get("WORLD_SIZE", "1"))
if layout == "dp":
    mesh = DeviceMesh.from_sizes(dp_size=world, ulysses_size=2, device_type="cpu")
elif layout == "fsdp":
    mesh = DeviceMesh.from_sizes(fsdp_size=world, ulysses_size=2, device_type="cpu")
else:
    mesh = DeviceMesh.from_sizes(dp_size=1, device_type="cpu")
twinkle.initialize(mode="local", seed=0, global_device_mesh=mesh)
torch.use_deterministic_algorithms(True)

model_dir = os.environ.get("SP_MODEL_DIR") or str(tiny_model_path())
dataset = Dataset(dataset_meta=DatasetMeta(str(self_cognition_path()), data_slice=range(24)))
dataset.set_template("Template", model_id=model_dir, max_length=256)
dataset.map(SelfCognitionProcessor("twinkle LLM", "ModelScope community"))
dataset.encode()
loader = DataLoader(dataset=dataset, batch_size=4)

model = TransformersModel(model_id=model_dir, mixed_precision="no", gradient_checkpointing=False)
model.set_optimizer("AdamW", lr=1e-3)
losses, widths = [], []
for batch in loader:
    out = model.forward_backward(inputs=batch)
    model.clip_grad_and_step()
    losses.append(float(model.calculate_metric(is_training=True)["loss"]))
    # this rank's time axis against the batch's: half (rounded up) under sp=2
    widths.append([int(out["logps"].shape[1]), max(len(row["input_ids"]) for row in batch)])
if int(os.environ.get("RANK", "0")) == 0:
    print("LOSSES " + json.dumps(losses), flush=True)
    print("WIDTHS " + json.dumps(widths), flush=True)
