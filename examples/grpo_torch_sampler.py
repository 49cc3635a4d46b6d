"""GRPO with ``TorchSampler`` in the loop, configured by flags the upstream cookbook way (``rl/grpo/grpo.py``,
whose vLLM sampler and checkpoint engine need a GPU; here the policy samples itself on the CPU).

    python examples/grpo_torch_sampler.py --lr 3e-3 --max-steps 40
    python examples/grpo_torch_sampler.py --model-id ms://Qwen/Qwen3-0.6B --use-lora --lr 1e-5

Each step: ``sampler.receive_weights(model)``, ``--num-generations`` completions for each of ``--batch-size``
prompts, a reward, ``GRPOAdvantage`` within each group, and ``forward_backward(advantages=, old_logps=)`` with the
loss ``--loss-cls`` (``GRPOLoss``, or a variant: ``GSPOLoss``, ``CISPOLoss``, ``BNPOLoss``, ``DRGRPOLoss``,
``SAPOLoss``). Changed from upstream: the model, the data (the bundled questions) and the reward (a toy: the share
of digits in the completion, which the tiny random model can learn in seconds; use
``twinkle.reward.GSM8KAccuracyReward`` with ``GSM8KProcessor`` data for a real run).
"""

import statistics

from peft import LoraConfig

import twinkle
from twinkle import get_logger
from twinkle.advantage import GRPOAdvantage
from twinkle.assets import self_cognition_rows, tiny_model_path
from twinkle.cli import CLI
from twinkle.data_format import SamplingParams
from twinkle.model import TransformersModel
from twinkle.sampler import TorchSampler

args = CLI.from_args()
logger = get_logger()

MODEL_ID = args.model.model_id or str(tiny_model_path())
NUM_GENERATIONS = args.rl.num_generations
MAX_TOKENS = args.sampling.max_tokens or 12


def digit_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def train():
    twinkle.initialize(mode="local", seed=args.training.seed)
    prompts = [{"messages": [{"role": "user", "content": row["query"]}]} for row in self_cognition_rows()]

    model = TransformersModel(model_id=MODEL_ID, mixed_precision=args.model.mixed_precision)
    if args.lora.use_lora:
        model.add_adapter_to_model("default", LoraConfig(**args.get_lora_args()))
    loss_cls = args.loss.loss_cls if args.loss.loss_cls != "CrossEntropyLoss" else "GRPOLoss"
    model.set_loss(loss_cls, epsilon=args.loss.epsilon, epsilon_high=args.loss.epsilon_high, beta=0.0)
    model.add_metric("GRPOMetric", is_training=True)
    model.set_optimizer(args.optimizer.optimizer_cls, lr=args.optimizer.learning_rate)

    sampler = TorchSampler(MODEL_ID)
    sampler.set_template("Template", max_length=256)
    advantage = GRPOAdvantage()
    rewards_seen = []
    prompts_per_step = args.training.batch_size
    for step in range(args.training.max_steps):
        sampler.receive_weights(model)
        batch = [prompts[(step * prompts_per_step + i) % len(prompts)] for i in range(prompts_per_step)]
        params = SamplingParams(max_tokens=MAX_TOKENS, num_samples=NUM_GENERATIONS,
                                temperature=args.sampling.temperature, logprobs=0, seed=step)
        sequences = [seq for response in sampler.sample(batch, params) for seq in response.sequences]
        rewards = [digit_share(seq.decoded) for seq in sequences]
        model.forward_backward(
            inputs=[seq.new_input_feature for seq in sequences],
            advantages=advantage(rewards, num_generations=NUM_GENERATIONS),
            old_logps=[[entry[0][1] for entry in seq.logprobs] for seq in sequences],
        )
        model.clip_grad_and_step(max_grad_norm=args.optimizer.max_grad_norm)
        rewards_seen.append(statistics.fmean(rewards))
        if (step + 1) % args.training.log_interval == 0:
            window = rewards_seen[-args.training.log_interval:]
            logger.info(f"step {step + 1}: mean reward {statistics.fmean(window):.3f} "
                        f"{model.calculate_metric(is_training=True)}")
    path = model.save("last-checkpoint", output_dir=args.training.output_dir)
    logger.info(f"saved {path}")


if __name__ == "__main__":
    train()
