"""Full-parameter preference training against a separate frozen reference model (upstream's
``rl/dpo/dpo_full.py``), configured by flags; ``--loss-type`` picks the loss as upstream's script does:

    python examples/dpo_full.py --lr 1e-3 --max-steps 10                    # DPO (sigmoid)
    python examples/dpo_full.py --lr 1e-3 --loss-type simpo --beta 2.5      # SimPOLoss(beta, gamma=0.5)
    python examples/dpo_full.py --loss-type orpo                            # ORPOLoss(lambda_orpo=beta)
    python examples/dpo_full.py --loss-type cpo                             # CPOLoss(beta, bc_coef=1.0)

DPO types (sigmoid, hinge, ipo, kto_pair) need reference log-probabilities: a second ``TransformersModel`` of the
same weights, never stepped, gives them with ``forward_only``. SimPO, ORPO and CPO are reference-free, so the
reference model is not built for them. Upstream runs Megatron unless ``--strategy native_fsdp``; ours always runs
the Transformers backend.
"""

import twinkle
from twinkle import DeviceMesh, Platform, get_logger
from twinkle.assets import preference_pairs_path, tiny_model_path
from twinkle.cli import CLI
from twinkle.dataloader import DataLoader, interleave_pairs
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.loss import CPOLoss, DPOLoss, ORPOLoss, SimPOLoss
from twinkle.metric import DPOMetric
from twinkle.model import TransformersModel
from twinkle.preprocessor import EmojiDPOProcessor

args = CLI.from_args()
logger = get_logger()

MODEL_ID = args.model.model_id or str(tiny_model_path())
DATASET_ID = args.dataset.dataset_id or str(preference_pairs_path())
LOSS_TYPE = args.loss.loss_type
BETA = args.loss.beta


def build_loss():
    if LOSS_TYPE == "simpo":
        return SimPOLoss(beta=BETA, gamma=0.5)
    if LOSS_TYPE == "orpo":
        return ORPOLoss(lambda_orpo=BETA)
    if LOSS_TYPE == "cpo":
        return CPOLoss(beta=BETA, bc_coef=1.0)
    return DPOLoss(beta=BETA, loss_type=LOSS_TYPE)


def train():
    world_size = args.infra.world_size or 1
    device_mesh = DeviceMesh.from_sizes(dp_size=world_size, device_type=Platform.get_platform().device_prefix())
    twinkle.initialize(mode="local", seed=args.training.seed, global_device_mesh=device_mesh)

    dataset = Dataset(dataset_meta=DatasetMeta(DATASET_ID, data_slice=range(args.training.train_samples or 80)))
    dataset.set_template("Template", model_id=MODEL_ID, max_length=args.template.max_length)
    dataset.map(EmojiDPOProcessor())
    dataset.encode(load_from_cache_file=True)
    dataloader = DataLoader(dataset=dataset, batch_size=args.training.batch_size)

    loss = build_loss()
    needs_reference = isinstance(loss, DPOLoss)
    model = TransformersModel(model_id=MODEL_ID, mixed_precision=args.model.mixed_precision)
    model.set_loss(loss)
    model.add_metric(DPOMetric, is_training=True, beta=BETA)
    model.set_optimizer(args.optimizer.optimizer_cls, lr=args.optimizer.learning_rate)
    ref_model = TransformersModel(model_id=MODEL_ID, mixed_precision=args.model.mixed_precision) if needs_reference \
        else None

    for step, rows in enumerate(dataloader):
        if step >= args.training.max_steps:
            break
        batch = interleave_pairs(rows)
        extra = {"ref_outputs": ref_model.forward_only(inputs=batch)} if ref_model is not None else {}
        model.forward_backward(inputs=batch, **extra)
        model.clip_grad_and_step(max_grad_norm=args.optimizer.max_grad_norm)
        if (step + 1) % args.training.log_interval == 0:
            logger.info(f"step {step + 1}: {model.calculate_metric(is_training=True)}")
    path = model.save("last-checkpoint", output_dir=args.training.output_dir)
    logger.info(f"saved {path}")


if __name__ == "__main__":
    train()
