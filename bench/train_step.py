"""Time one LoRA training step: ``TransformersModel`` against a hand-written PyTorch + peft loop.

Both sides use the same model weights (built from the same seed), the same batch, LoRA config, optimizer (AdamW,
lr 1e-4, weight decay 0.01), gradient clipping at 1.0, the same precision and the same activation checkpointing.
The baseline is what one writes by hand: forward, token cross entropy on the pre-rolled labels, backward, clip,
step, zero_grad, ``loss.item()``. Each side runs in its own child process so peak memory is measured cleanly
(CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak resident set size of the training loop, from Linux's
``VmHWM`` after resetting it through ``/proc/self/clear_refs``). Step time is wall-clock on CUDA and the process's
CPU time on the CPU (one torch thread), so a busy shared machine does not skew the CPU ratio.

    python bench/train_step.py                                   # CPU, the tiny model
    python bench/train_step.py --device cuda --dtype bf16 --preset 0.5b

Goal: ours / baseline time per step <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# run from a checkout without `pip install -e .`: the repository root holds the twinkle package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {
    # Qwen2.5-0.5B's shape; random weights built locally, nothing downloaded
    "0.5b": dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
}


def _config(preset: str):
    from transformers import AutoConfig, Qwen2Config

    if preset == "tiny":
        from twinkle.assets import tiny_model_path

        return AutoConfig.from_pretrained(tiny_model_path())
    return Qwen2Config(**PRESETS[preset], architectures=["Qwen2ForCausalLM"])


def _batch(args, vocab: int, device):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (args.batch, args.seq), generator=g)
    labels = ids.roll(-1, dims=1)
    labels[:, : args.seq // 4] = -100  # a prompt without loss, as in SFT
    labels[:, -1] = -100
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": torch.arange(args.seq).expand(args.batch, args.seq).clone(),
        "labels": labels,
    }
    return {k: v.to(device) for k, v in batch.items()}


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=32, target_modules="all-linear")


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_side(args) -> dict:
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)  # shared CPUs: more threads than cores only adds noise
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    config = _config(args.preset)
    batch = _batch(args, config.vocab_size, device)

    if args.side == "ours":
        from twinkle.model import TransformersModel

        model = TransformersModel(
            config=config, mixed_precision=args.dtype if dtype else "no", gradient_checkpointing=args.grad_ckpt
        )
        model.add_adapter_to_model("default", _lora())
        model.set_optimizer("AdamW", lr=1e-4, weight_decay=0.01)

        def step() -> float:
            out = model.forward_backward(inputs=batch)
            model.clip_grad_and_step(max_grad_norm=1.0)
            return out["loss"]
    else:
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
        if args.grad_ckpt:
            if hasattr(base, "activation_checkpointing_enable"):
                base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
        model = get_peft_model(base, _lora())
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        labels = batch["labels"]

        def step() -> float:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**inputs, use_cache=False).logits
            loss_sum = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            n = (labels != -100).sum()
            (loss_sum / n).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss_sum.item()) / int(n.item())

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    # CPU: process CPU time (one thread), so other programs on a shared machine do not skew the ratio;
    # CUDA: wall-clock time around a synchronised step
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for _ in range(args.steps):
        t0 = clock()
        step()
        sync()
        times.append(clock() - t0)
    times.sort()
    median = times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    return {"median_s": median, "mean_s": sum(times) / len(times), "peak_bytes": peak,
            "tokens_per_s": args.batch * args.seq / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: bf16 on cuda")
    parser.add_argument("--preset", default=None, choices=["tiny", "0.5b"], help="default: 0.5b on cuda, else tiny")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default 4 tiny, 8 0.5b)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per row (default 64 tiny, 1024 0.5b)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30 tiny, 20 0.5b)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (cpu only)")
    parser.add_argument("--rounds", type=int, default=None, help="alternate baseline/ours this many times; best kept")
    parser.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false",
                        help="turn activation checkpointing off on both sides (default on, as TransformersModel)")
    parser.add_argument("--side", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.preset = args.preset or ("0.5b" if args.device == "cuda" else "tiny")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    big = args.preset != "tiny"
    args.batch = args.batch or (8 if big else 4)
    args.seq = args.seq or (1024 if big else 64)
    args.steps = args.steps or (20 if big else 30)
    args.rounds = args.rounds or (1 if args.device == "cuda" else 3)

    if args.side:  # child: run one side, print one JSON line
        print("RESULT " + json.dumps(run_side(args)), flush=True)
        return

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device here")
    print(f"train step bench: preset={args.preset} device={args.device} dtype={args.dtype} batch={args.batch} "
          f"seq={args.seq} steps={args.steps} warmup={args.warmup} grad_ckpt={args.grad_ckpt}", flush=True)
    results: dict[str, list[dict]] = {"baseline": [], "ours": []}
    forwarded = [a for a in sys.argv[1:]]
    for _ in range(args.rounds):
        for side in ("baseline", "ours"):
            cmd = [sys.executable, os.path.abspath(__file__), *forwarded, "--side", side,
                   "--preset", args.preset, "--dtype", args.dtype, "--batch", str(args.batch), "--seq", str(args.seq),
                   "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                sys.exit(f"the {side} run failed (exit {proc.returncode}); its output is above")
            results[side].append(json.loads(lines[-1][len("RESULT "):]))
    best = {side: min(runs, key=lambda r: r["median_s"]) for side, runs in results.items()}
    b, o = best["baseline"], best["ours"]
    mem_kind = "cuda max_memory_allocated" if args.device == "cuda" else "peak RSS of the training loop"
    clock = "wall" if args.device == "cuda" else "cpu-time"
    print(f"{'':10} {'s/step (median, ' + clock + ')':>26} {'tokens/s':>12} {'peak memory MiB':>16}")
    for side, r in (("baseline", b), ("ours", o)):
        print(f"{side:10} {r['median_s']:26.4f} {r['tokens_per_s']:12.0f} {r['peak_bytes'] / 2**20:16.1f}")
    ratio = o["median_s"] / b["median_s"]
    mem_ratio = o["peak_bytes"] / max(1, b["peak_bytes"])
    print(f"time ratio ours/baseline: {ratio:.3f} (goal <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})")
    print(f"peak memory ratio ours/baseline ({mem_kind}): {mem_ratio:.3f}")


if __name__ == "__main__":
    main()
