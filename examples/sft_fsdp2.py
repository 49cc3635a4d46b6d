"""LoRA SFT with FSDP2, configured by flags the upstream cookbook way (``transformers/fsdp2.py``).

    torchrun --nproc_per_node 2 examples/sft_fsdp2.py --fsdp-size 2 --lr 5e-3 --max-steps 20
    python examples/sft_fsdp2.py --lr 5e-3 --max-steps 20                     # one process
    torchrun --nproc_per_node 2 examples/sft_fsdp2.py --model-id ms://Qwen/Qwen3-0.6B --dataset-id ms://swift/self-cognition

Only the model, data and devices differ from upstream's script: with no ``--model-id`` / ``--dataset-id`` it uses
the bundled tiny Qwen2 and self-cognition rows (pass ``--lr 5e-3`` for the tiny random model; the flag default
1e-5 is for real models), and the mesh's device type comes from ``Platform.get_platform()`` (``cpu`` here).
Every setting is a ``twinkle.cli`` flag (or ``TWINKLE_<NAME>`` / ``.env``); ``--model-name`` and
``--model-author`` land in ``args.extra``.
"""

from peft import LoraConfig

import twinkle
from twinkle import DeviceMesh, Platform, get_logger
from twinkle.assets import self_cognition_path, tiny_model_path
from twinkle.cli import CLI
from twinkle.dataloader import DataLoader
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.kernel import kernelize, liger_builtin
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
        fsdp_size=fsdp_size, dp_size=world_size // fsdp_size, device_type=Platform.get_platform().device_prefix()
    )
    twinkle.initialize(mode=args.infra.mode, seed=args.training.seed, global_device_mesh=device_mesh)

    dataset = Dataset(dataset_meta=DatasetMeta(DATASET_ID, data_slice=range(args.training.train_samples or 320)))
    dataset.set_template(args.template.template_cls or "Template", model_id=MODEL_ID,
                         max_length=args.template.max_length)
    dataset.map(SelfCognitionProcessor(args.extra.get("model_name", "twinkle LLM"),
                                       args.extra.get("model_author", "ModelScope community")))
    dataset.encode()
    dataloader = DataLoader(dataset=dataset, batch_size=args.training.batch_size)

    model = TransformersModel(model_id=MODEL_ID, strategy=args.model.strategy,
                              mixed_precision=args.model.mixed_precision)
    if args.model.enable_liger:
        kernelize(model, liger_builtin())
    model.add_adapter_to_model(args.lora.adapter_name, LoraConfig(**args.get_lora_args()),
                               gradient_accumulation_steps=args.training.gradient_accumulation_steps)
    model.set_optimizer(args.optimizer.optimizer_cls, lr=args.optimizer.learning_rate)
    total = min(len(dataloader), args.training.max_steps * args.training.gradient_accumulation_steps)
    model.set_lr_scheduler("CosineWarmupScheduler", num_warmup_steps=args.scheduler.num_warmup_steps,
                           num_training_steps=total)

    for step, batch in enumerate(dataloader):
        if step >= total:
            break
        model.forward_backward(inputs=batch)
        model.clip_grad_and_step(max_grad_norm=args.optimizer.max_grad_norm)
        if (step + 1) % args.training.log_interval == 0:
            metric = model.calculate_metric(is_training=True)
            logger.info(f"step {step + 1}: {metric}")
    path = model.save("last-checkpoint", output_dir=args.training.output_dir)
    logger.info(f"saved {path}")


if __name__ == "__main__":
    train()
