"""A tiny but genuine causal LM, written in the Hugging Face format, for machines without hub access.

The model is a real ``Qwen2ForCausalLM`` (a few layers, hidden size 64) with a byte-level BPE tokenizer trained by
``tokenizers`` on the bundled self-cognition text, and a ChatML chat template that marks assistant content with
``{% generation %}`` so ``return_assistant_tokens_mask`` works. It is saved with ``save_pretrained`` and loads back
through ``AutoModelForCausalLM`` / ``AutoTokenizer``: the same code path as any hub model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' and default_system is defined and default_system %}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_corpus() -> list[str]:
    from twinkle.assets._self_cognition import self_cognition_rows

    names = ["twinkle LLM", "ModelScope community", "twinkle robot", "twinkle lab", "You are a helpful assistant."]
    corpus = [row["query"] + " " + row["response"] for row in self_cognition_rows()]
    corpus += [*names, "system", "user", "assistant", "The quick brown fox jumps over the lazy dog. 0123456789"]
    return corpus


def make_tiny_model(
    output_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny Qwen2 causal LM and its tokenizer to ``output_dir`` and return the path.

    Deterministic for a given ``seed``: the same arguments give the same weights and the same vocabulary.

    Args:
        output_dir: folder to create (or overwrite) with ``config.json``, weights and tokenizer files.
        hidden_size: model width; heads are ``hidden_size // 16``.
        num_layers: number of decoder layers.
        vocab_size: target BPE vocabulary size (special tokens included).
        seed: seed for the weight initialisation.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)

    heads = max(1, hidden_size // 16)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=cast(int, tokenizer.convert_tokens_to_ids("<|im_end|>")),  # one token in, one id out
        pad_token_id=cast(int, tokenizer.convert_tokens_to_ids("<|endoftext|>")),
        architectures=["Qwen2ForCausalLM"],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    (out / "twinkle_tiny.json").write_text(json.dumps({"made_by": "twinkle.assets.make_tiny_model", "seed": seed}))
    return out
