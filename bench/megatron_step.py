"""Training-step time of ``MegatronModel`` against ``TransformersModel`` on the same model and batch (a GPU with
megatron-core, TransformerEngine and mcore_bridge). Prints both and the ratio Megatron / Transformers.

    python bench/megatron_step.py --model PATH_OR_ID [--batch 8] [--seq 512] [--steps 10]

Never run here (no GPU machine): it is the measurement issue 17 asks for. Both models train LoRA r=16 on all
linear layers with the same rows; the first two steps are warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def time_steps(model, rows, steps: int) -> float:
    import torch

    for _ in range(2):
        model.forward_backward(inputs=rows)
        model.clip_grad_and_step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        model.forward_backward(inputs=rows)
        model.clip_grad_and_step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    from peft import LoraConfig

    from twinkle.model import MegatronModel, TransformersModel

    rows = [{"input_ids": list(range(1, args.seq + 1)), "labels": [*range(2, args.seq + 1), -100]}
            for _ in range(args.batch)]
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    hf = TransformersModel(model_id=args.model)
    hf.add_adapter_to_model("default", lora)
    hf.set_optimizer("AdamW", lr=1e-5)
    hf_s = time_steps(hf, rows, args.steps)
    del hf
    mg = MegatronModel(args.model)
    mg.add_adapter_to_model("default", lora)
    mg.set_optimizer("default", lr=1e-5)
    mg_s = time_steps(mg, rows, args.steps)
    print(json.dumps({"transformers_step_s": round(hf_s, 4), "megatron_step_s": round(mg_s, 4),
                      "ratio_megatron_over_transformers": round(mg_s / hf_s, 3)}))


if __name__ == "__main__":
    main()
