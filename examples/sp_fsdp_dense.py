"""SFT with Ulysses sequence parallelism and FSDP2, configured by flags the upstream cookbook way
(``transformers/sp_fsdp_dense.py``).

    torchrun --nproc_per_node 2 examples/sp_fsdp_dense.py --fsdp-size 2 --ulysses-size 2 --lr 5e-3
    torchrun --nproc_per_node 4 examples/sp_fsdp_dense.py --fsdp-size 4 --ulysses-size 2 --model-id ms://Qwen/Qwen3-0.6B

The ``--ulysses-size`` ranks of a group read the same rows and each keeps a contiguous slice of every sequence;
attention gathers the group's slices (``twinkle.model.transformers._ulysses``). ``ulysses_size`` must divide
``fsdp * dp`` and the model's number of attention heads. Full-parameter training here (the tiny model learns
faster so), ``--use-lora`` for LoRA. Changed from upstream: the model, the data and the devices.
"""

from peft import LoraConfig

import twinkle
from twinkle import DeviceMesh, Platform, get_logger
from twinkle.assets import self_cognition_path, tiny_model_path
from twinkle.cli import CLI
from twinkle.dataloader import DataLoader
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.model import TransformersModel
from twinkle.preprocessor import SelfCognitionProcessor

args = CLI.from_args()
logger = get_logger()

MODEL_ID = args.model.model_id or str(tiny_model_path())
DATASET_ID = args.dataset.dataset_id or str(self_cognition_path())


def train():
    world_size = args.infra.world_size or 1
    fsdp_size = args.infra.fsdp_size or world_size
    device_mesh = DeviceMesh.from_sizes(
        fsdp_size=fsdp_size, dp_size=world_size // fsdp_size, ulysses_size=args.infra.ulysses_size,
        device_type=Platform.get_platform().device_prefix(),
    )
    twinkle.initialize(mode="local", seed=args.training.seed, global_device_mesh=device_mesh)

    dataset = Dataset(dataset_meta=DatasetMeta(DATASET_ID, data_slice=range(args.training.train_samples or 320)))
    dataset.set_template("Template", model_id=MODEL_ID, max_length=args.template.max_length)
    dataset.map(SelfCognitionProcessor(args.extra.get("model_name", "twinkle LLM"),
                                       args.extra.get("model_author", "ModelScope community")))
    dataset.encode()
    dataloader = DataLoader(dataset=dataset, batch_size=args.training.batch_size)

    model = TransformersModel(model_id=MODEL_ID, strategy=args.model.strategy,
                              mixed_precision=args.model.mixed_precision)
    if args.lora.use_lora:
        model.add_adapter_to_model(args.lora.adapter_name, LoraConfig(**args.get_lora_args()))
    model.set_optimizer(args.optimizer.optimizer_cls, lr=args.optimizer.learning_rate)
    for step, batch in enumerate(dataloader):
        if step >= args.training.max_steps:
            break
        model.forward_backward(inputs=batch)
        model.clip_grad_and_step(max_grad_norm=args.optimizer.max_grad_norm)
        if (step + 1) % args.training.log_interval == 0:
            logger.info(f"step {step + 1}: {model.calculate_metric(is_training=True)}")
    path = model.save("last-checkpoint", output_dir=args.training.output_dir)
    logger.info(f"saved {path}")


if __name__ == "__main__":
    train()
