"""Small, real artifacts for machines without hub access: a tiny causal LM and the self-cognition data.

>>> from twinkle.assets import make_tiny_model, self_cognition_path
>>> model_dir = make_tiny_model("/tmp/tiny-qwen2")      # a genuine Qwen2ForCausalLM + tokenizer
>>> data_file = self_cognition_path()                   # jsonl with query/response rows
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from twinkle.assets._self_cognition import self_cognition_rows
from twinkle.assets._tiny_model import CHATML_TEMPLATE, make_tiny_model

__all__ = [
    "CHATML_TEMPLATE",
    "make_tiny_model",
    "preference_pairs_path",
    "preference_rows",
    "self_cognition_path",
    "self_cognition_rows",
    "tiny_model_path",
]


def _cache_root() -> Path:
    return Path(os.environ.get("TWINKLE_ASSETS_DIR", Path(tempfile.gettempdir()) / "twinkle-assets"))


def self_cognition_path(directory: str | Path | None = None) -> Path:
    """Write the bundled self-cognition rows as jsonl (once) and return the file's path."""
    path = Path(directory or _cache_root()) / "self_cognition.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in self_cognition_rows()))
        os.replace(tmp, path)  # atomic: concurrent ranks never see a half-written file
    return path


def preference_rows() -> list[dict[str, str]]:
    """Preference pairs in the columns of upstream's DPO dataset (``shareAI-Llama3-DPO-zh-en-emoji``: ``prompt``,
    ``answer_zh`` the preferred answer, ``answer_en`` the other), built from the self-cognition rows: the preferred
    answer names "twinkle LLM" by "ModelScope community" and ends with an emoji, the other names ChatGPT by OpenAI.
    80 rows, so ``EmojiDPOProcessor()`` with its defaults reads them as upstream's script does."""
    def fill(text: str, name: str, author: str) -> str:
        return text.replace("{{NAME}}", name).replace("{{AUTHOR}}", author)

    return [
        {
            "prompt": row["query"],
            "answer_zh": fill(row["response"], "twinkle LLM", "ModelScope community") + " 😊",
            "answer_en": fill(row["response"], "ChatGPT", "OpenAI"),
        }
        for row in self_cognition_rows()
    ]


def preference_pairs_path(directory: str | Path | None = None) -> Path:
    """Write ``preference_rows()`` as jsonl (once) and return the file's path."""
    path = Path(directory or _cache_root()) / "preference_pairs.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in preference_rows()))
        os.replace(tmp, path)
    return path


def tiny_model_path(directory: str | Path | None = None) -> Path:
    """Return the folder of the tiny model, making it on first use (about 2 s)."""
    path = Path(directory or _cache_root()) / "tiny-qwen2"
    if not (path / "config.json").exists() or not (path / "twinkle_tiny.json").exists():
        staging = Path(tempfile.mkdtemp(prefix="tiny-qwen2-", dir=path.parent if path.parent.exists() else None))
        make_tiny_model(staging)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, path)
        except OSError:  # another process won the race; its copy is identical
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return path
