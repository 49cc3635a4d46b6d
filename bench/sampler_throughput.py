"""Sampler throughput: generated tokens per second of ``TorchSampler`` and, on a GPU with vLLM, ``vLLMSampler``,
on the same model, prompts and ``SamplingParams``; prints the ratio vLLM / Torch when both ran.

    python bench/sampler_throughput.py [--model PATH_OR_ID] [--prompts 64] [--max-tokens 128] [--samples 4]

Without ``--model`` it builds a 0.5B-shaped random Qwen2 (hidden 896, 24 layers, 14 heads, 2 KV heads, the
bundled tokenizer) so no hub access is needed. On the CPU only TorchSampler runs (use a small ``--prompts``).
The vLLM half has never run here (no GPU machine): it is the measurement issue 17 asks for on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def qwen_05b_shaped(folder: Path) -> str:
    """A random Qwen2 with Qwen2.5-0.5B's shapes (vocabulary from the bundled tokenizer), saved to ``folder``."""
    import shutil

    import transformers

    from twinkle.assets import tiny_model_path

    tiny = Path(tiny_model_path())
    config = transformers.AutoConfig.from_pretrained(tiny)
    config.update({"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                   "head_dim": 64, "layer_types": ["full_attention"] * 24})
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    for f in tiny.iterdir():
        if "token" in f.name or f.name.endswith(".jinja"):
            shutil.copy(f, folder / f.name)
    return str(folder)


def run(sampler, prompts, params) -> tuple[float, int]:
    sampler.sample(prompts[:2], params)  # warm-up (kernels, caches)
    start = time.perf_counter()
    out = sampler.sample(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(s.tokens) for r in out for s in r.sequences)
    return tokens / seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    import torch

    from twinkle.data_format import SamplingParams

    model = args.model or qwen_05b_shaped(Path(tempfile.mkdtemp(prefix="qwen05b_")))
    # fixed-length completions (no EOS stop) so both samplers generate the same number of tokens
    params = SamplingParams(max_tokens=args.max_tokens, num_samples=args.samples, temperature=1.0, seed=0,
                            logprobs=1)
    prompts = [{"input_ids": [5 + (i % 50), 17, 42, 99, 7, 3, 11 + i % 7, 23]} for i in range(args.prompts)]
    results: dict[str, float] = {}
    if not args.skip_torch:
        from twinkle.sampler import TorchSampler

        kw = {"dtype": torch.bfloat16} if torch.cuda.is_available() else {}
        results["torch_tokens_per_s"], _ = run(TorchSampler(model, **kw), prompts, params)
    if torch.cuda.is_available():
        try:
            from twinkle.sampler import vLLMSampler

            sampler = vLLMSampler(model, engine_args={"gpu_memory_utilization": 0.5, "max_model_len": 1024})
            results["vllm_tokens_per_s"], _ = run(sampler, prompts, params)
        except ImportError as exc:
            print(f"vLLM not measured: {exc}", file=sys.stderr)
    if "torch_tokens_per_s" in results and "vllm_tokens_per_s" in results:
        results["ratio_vllm_over_torch"] = results["vllm_tokens_per_s"] / results["torch_tokens_per_s"]
    print(json.dumps({"model": model, "prompts": args.prompts, "samples": args.samples,
                      "max_tokens": args.max_tokens, **{k: round(v, 2) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
