"""DPO with LoRA, configured by flags the upstream cookbook way (``rl/dpo/dpo_lora.py``).

    python examples/dpo_lora.py --lr 5e-3 --max-steps 10
    torchrun --nproc_per_node 2 examples/dpo_lora.py --lr 5e-3 --batch-size 4

The data path is upstream's: ``EmojiDPOProcessor`` turns each row into ``positive``/``negative`` trajectories,
``Dataset.encode()`` encodes both, and each batch is interleaved chosen/rejected (``interleave_pairs``). The
reference is the same model with its adapter off (``forward_only(disable_lora=True)``). With no ``--dataset-id``
the bundled pairs (upstream's emoji dataset columns: prompt, answer_zh preferred, answer_en rejected) are used.
Upstream's DPO scripts run Megatron unless ``--strategy native_fsdp``; ours always run the Transformers backend.
``--batch-size`` counts pairs (rows of the dataset); each rank gets whole pairs.
"""

from peft import LoraConfig

import twinkle
from twinkle import DeviceMesh, Platform, get_logger
from twinkle.assets import preference_pairs_path, tiny_model_path
from twinkle.cli import CLI
from twinkle.dataloader import DataLoader, interleave_pairs
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.loss import DPOLoss
from twinkle.metric import DPOMetric
from twinkle.model import TransformersModel
from twinkle.preprocessor import EmojiDPOProcessor

args = CLI.from_args()
logger = get_logger()

MODEL_ID = args.model.model_id or str(tiny_model_path())
DATASET_ID = args.dataset.dataset_id or str(preference_pairs_path())


def train():
    world_size = args.infra.world_size or 1
    device_mesh = DeviceMesh.from_sizes(dp_size=world_size, device_type=Platform.get_platform().device_prefix())
    twinkle.initialize(mode="local", seed=args.training.seed, global_device_mesh=device_mesh)

    dataset = Dataset(dataset_meta=DatasetMeta(DATASET_ID, data_slice=range(args.training.train_samples or 80)))
    dataset.set_template("Template", model_id=MODEL_ID, max_length=args.template.max_length)
    dataset.map(EmojiDPOProcessor())
    dataset.encode(load_from_cache_file=True)
    dataloader = DataLoader(dataset=dataset, batch_size=args.training.batch_size)

    model = TransformersModel(model_id=MODEL_ID, mixed_precision=args.model.mixed_precision)
    model.add_adapter_to_model("default", LoraConfig(**args.get_lora_args()),
                               gradient_accumulation_steps=args.training.gradient_accumulation_steps)
    model.set_loss(DPOLoss, beta=args.loss.beta, loss_type=args.loss.loss_type)
    model.add_metric(DPOMetric, is_training=True, beta=args.loss.beta)
    model.set_optimizer(args.optimizer.optimizer_cls, lr=args.optimizer.learning_rate)

    for step, rows in enumerate(dataloader):
        if step >= args.training.max_steps:
            break
        batch = interleave_pairs(rows)
        ref_outputs = model.forward_only(inputs=batch, disable_lora=True)
        model.forward_backward(inputs=batch, ref_outputs=ref_outputs)
        model.clip_grad_and_step(max_grad_norm=args.optimizer.max_grad_norm)
        if (step + 1) % args.training.log_interval == 0:
            logger.info(f"step {step + 1}: {model.calculate_metric(is_training=True)}")
    path = model.save("last-checkpoint", output_dir=args.training.output_dir)
    logger.info(f"saved {path}")


if __name__ == "__main__":
    train()
