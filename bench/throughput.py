"""Trained tokens per second on chat-SFT-like lengths: ``TransformersModel`` against the loop a user writes by hand.

Data (a seeded generator, not the bundled data: its rows are all short): row lengths drawn from a lognormal with a
median of 180 tokens and sigma 0.9, clipped to 16..768 (``--max-len``), as chat SFT sets look; the first 20-60% of
each row is the prompt (label -100), the rest the response; token ids uniform. Batches of 8 rows, in the same order
on both sides.

The baseline is the loop people write: pad each batch to its longest row (dynamic padding), a Hugging Face model
(``sdpa``), peft LoRA (r=8, alpha 32, all linear layers), AdamW (lr 1e-4, weight decay 0.01), cross entropy over the
labelled tokens, backward, clip at 1.0, step, zero_grad, ``loss.item()``; no activation checkpointing. Ours is
``TransformersModel`` with its defaults (padding-free packing, logits only at labels, activation checkpointing on)
fed the encoded rows, as the DataLoader yields them. Both start from the same weights and LoRA init, take the same
number of optimizer steps over the same batches, and the per-step losses are compared (they must agree to ~1e-5).

Trained tokens = labelled, non-padding tokens. Each side runs in its own child process; the CPU clock is the
process's CPU time with one torch thread (a busy shared machine does not skew it), peak memory the peak RSS of the
training loop; on CUDA wall-clock and ``max_memory_allocated``, plus MFU = model FLOPs/s / the device's peak dense
bf16 FLOPs (model FLOPs: 6 x matmul parameters per real token + causal attention, the same count for both sides).

    python bench/throughput.py                      # tiny (the bundled model) and wide (4 x 256, vocab 32768)
    python bench/throughput.py --ablations   # each lever on its own, checkpointing on both sides
    python bench/throughput.py --device cuda --preset 0.5b --dtype bf16

Goal: ours >= 1.3x the baseline's trained tokens/s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# bench/ is not a package: train_step.py is found through the script's own folder
from train_step import PRESETS as STEP_PRESETS
from train_step import _peak_rss_bytes, _reset_peak_rss

PRESETS = {
    # a CPU-sized Qwen2 shape: 4 layers, 256 wide, Qwen2's MLP ratio, a 32k vocabulary
    "wide": dict(
        vocab_size=32768, hidden_size=256, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
    ),
    "0.5b": STEP_PRESETS["0.5b"],
}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}

# name -> (padding_free, labelled_logits_only, activation checkpointing)
OURS = {
    "ours": (True, True, True),
    "ours-all-logits": (True, False, True),
    "ours-padded": (False, False, True),
    "ours-no-ckpt": (True, True, False),
}


def _config(preset: str):
    from transformers import AutoConfig, Qwen2Config

    if preset == "tiny":
        from twinkle.assets import tiny_model_path

        return AutoConfig.from_pretrained(tiny_model_path())
    return Qwen2Config(**PRESETS[preset], architectures=["Qwen2ForCausalLM"])


def make_rows(args, vocab: int) -> list[dict]:
    """Encoded rows (numpy, as ``Template.encode`` makes them) with chat-SFT-like lengths."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    n = args.batch * (args.steps + args.warmup)
    lengths = np.clip(np.exp(rng.normal(math.log(180), 0.9, n)), 16, args.max_len).astype(int)
    rows = []
    for length in lengths:
        ids = rng.integers(3, vocab, length)
        labels = np.roll(ids, -1)
        labels[: int(length * rng.uniform(0.2, 0.6))] = -100
        labels[-1] = -100
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": np.ones(length, dtype=np.int64),
                     "position_ids": np.arange(length), "length": int(length)})
    return rows


def model_flops(config, rows: list[dict]) -> float:
    """Training FLOPs of the real tokens: 6 x matmul parameters per token + causal attention (QK^T and AV)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * config.intermediate_size
    matmul_params = layers * per_layer + d * config.vocab_size
    tokens = sum(r["length"] for r in rows)
    # QK^T and AV: 2 matmuls x 2 FLOPs x L^2 x heads x head_dim, halved (causal), x3 (forward + backward)
    attention = sum(6 * layers * heads * head_dim * r["length"] ** 2 for r in rows)
    return 6.0 * matmul_params * tokens + attention


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=32, target_modules="all-linear")


def run_side(args) -> dict:
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    config = _config(args.preset)
    rows = make_rows(args, config.vocab_size)
    batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]

    if args.side in OURS:
        from twinkle.model import TransformersModel

        padding_free, labelled_only, ckpt = OURS[args.side]
        torch.manual_seed(0)
        model = TransformersModel(
            config=config, mixed_precision=args.dtype if dtype else "no", gradient_checkpointing=ckpt,
            padding_free=padding_free, labelled_logits_only=labelled_only,
        )
        torch.manual_seed(1)
        model.add_adapter_to_model("default", _lora())
        model.set_optimizer("AdamW", lr=1e-4, weight_decay=0.01)

        def step(batch) -> float:
            out = model.forward_backward(inputs=batch)  # encoded rows, as the DataLoader yields them
            model.clip_grad_and_step(max_grad_norm=1.0)
            n = sum(int((r["labels"] != -100).sum()) for r in batch)
            return float(out["loss"]) / n
    else:
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").to(device)
        if args.side == "baseline-ckpt":
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
        torch.manual_seed(1)
        model = get_peft_model(base, _lora())
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=1e-4)

        def collate(batch):  # dynamic padding to the longest row of this batch
            width = max(r["length"] for r in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for i, r in enumerate(batch):
                ids[i, : r["length"]] = torch.as_tensor(r["input_ids"])
                mask[i, : r["length"]] = 1
                labels[i, : r["length"]] = torch.as_tensor(r["labels"])
            return ids.to(device), mask.to(device), labels.to(device)

        def step(batch) -> float:
            ids, mask, labels = collate(batch)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.item())

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses = [step(b) for b in batches[: args.warmup]]
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    t0 = clock()
    for b in batches[args.warmup :]:
        losses.append(step(b))
    sync()
    elapsed = clock() - t0
    timed = [r for b in batches[args.warmup :] for r in b]
    labelled = sum(int((r["labels"] != -100).sum()) for r in timed)
    real = sum(r["length"] for r in timed)
    padded = sum(len(b) * max(r["length"] for r in b) for b in batches[args.warmup :])
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    return {"seconds": elapsed, "labelled_tokens": labelled, "real_tokens": real, "padded_tokens": padded,
            "tokens_per_s": labelled / elapsed, "peak_bytes": peak, "losses": losses,
            "flops_per_s": model_flops(config, timed) / elapsed}


def _peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def bench_preset(args, preset: str) -> dict:
    sides = ["baseline", "ours"]
    if args.ablations:
        sides += ["ours-all-logits", "ours-padded", "ours-no-ckpt", "baseline-ckpt"]
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for side in sides:
            cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--preset", preset,
                   "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--max-len", str(args.max_len),
                   "--threads", str(args.threads), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                sys.exit(f"the {side} run failed (exit {proc.returncode}); its output is above")
            r = json.loads(lines[-1][len("RESULT "):])
            if side not in results or r["tokens_per_s"] > results[side]["tokens_per_s"]:
                results[side] = r
    base = results["baseline"]
    peak = _peak_tflops(args)
    clock = "wall" if args.device == "cuda" else "cpu-time"
    mem_kind = "cuda max allocated" if args.device == "cuda" else "peak RSS"
    print(f"\npreset={preset} device={args.device} dtype={args.dtype} batch={args.batch} steps={args.steps} "
          f"(+{args.warmup} warm-up) lengths 16..{args.max_len}: {base['labelled_tokens']} labelled / "
          f"{base['real_tokens']} real / {base['padded_tokens']} padded tokens timed")
    print(f"{'side':14} {'trained tok/s':>14} {'ratio':>7} {'s (' + clock + ')':>14} {mem_kind + ' MiB':>20}"
          f" {'max |dloss|':>12}" + (f" {'MFU':>7}" if peak else ""))
    for side, r in results.items():
        dloss = max(abs(a - b) for a, b in zip(r["losses"], base["losses"], strict=True))
        mfu = f" {r['flops_per_s'] / (peak * 1e12):7.3f}" if peak else ""
        print(f"{side:14} {r['tokens_per_s']:14.0f} {r['tokens_per_s'] / base['tokens_per_s']:7.2f} "
              f"{r['seconds']:14.2f} {r['peak_bytes'] / 2**20:20.1f} {dloss:12.2e}{mfu}")
    ours = results["ours"]
    ratio = ours["tokens_per_s"] / base["tokens_per_s"]
    print(f"ours/baseline trained tokens/s: {ratio:.2f} (goal >= 1.3: {'met' if ratio >= 1.3 else 'NOT met'}); "
          f"peak memory ratio ours/baseline ({mem_kind}): {ours['peak_bytes'] / max(1, base['peak_bytes']):.2f}; "
          f"first-step loss {base['losses'][0]:.5f} vs {ours['losses'][0]:.5f}")
    return {"ratio": ratio, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: bf16 on cuda")
    parser.add_argument("--preset", default=None, choices=["tiny", "wide", "0.5b"],
                        help="default: tiny and wide on the CPU, 0.5b on cuda")
    parser.add_argument("--batch", type=int, default=8, help="rows per optimizer step")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed optimizer steps (default 12 tiny, 6 wide, 20 0.5b)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=768)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (cpu only)")
    parser.add_argument("--rounds", type=int, default=1, help="run each side this many times; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", action="store_true",
                        help="also run ours with every logit, ours padded, ours without activation checkpointing, "
                        "the baseline with it")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak dense bf16 TFLOPS for MFU")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")

    if args.side:  # child: one side, one JSON line
        args.steps = args.steps or 6
        print("RESULT " + json.dumps(run_side(args)), flush=True)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device here")
    presets = [args.preset] if args.preset else (["0.5b"] if args.device == "cuda" else ["tiny", "wide"])
    default_steps = {"tiny": 12, "wide": 6, "0.5b": 20}
    steps = args.steps
    for preset in presets:
        args.steps = steps or default_steps[preset]
        bench_preset(args, preset)


if __name__ == "__main__":
    main()
