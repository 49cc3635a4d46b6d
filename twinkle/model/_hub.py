"""Resolve a model id (``ms://``, ``hf://``, a bare id = ModelScope, or a local folder) to a local folder."""

from __future__ import annotations

import os
from pathlib import Path

from twinkle.errors import ModelNotFoundError

__all__ = ["resolve_model_dir"]


def _looks_local(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or model_id.count("/") > 1


def resolve_model_dir(model_id: str | os.PathLike[str]) -> str:
    """Return a local folder holding the model, downloading from its hub where needed.

    Raises:
        ModelNotFoundError: a local path that does not exist, ``hf://`` while ``TWINKLE_FORBID_HF`` is set, or an
            id the hub cannot serve (no network, no such repo); the message names the id.
    """
    text = os.fspath(model_id)
    if text.startswith("hf://"):
        repo = text[len("hf://"):]
        if os.environ.get("TWINKLE_FORBID_HF"):
            raise ModelNotFoundError(
                f"model id {text!r}: Hugging Face ids are forbidden here (TWINKLE_FORBID_HF is set); "
                f"use an ms:// id or a local folder"
            )
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(repo)
        except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to the caller
            raise ModelNotFoundError(
                f"cannot resolve model id {text!r} on Hugging Face ({type(exc).__name__}: {exc}); check the id and "
                f"the network, or pass the path of a local folder with config.json"
            ) from exc
    if not text.startswith("ms://"):
        path = Path(text).expanduser()
        if path.exists():
            if not path.is_dir():
                raise ModelNotFoundError(f"model path {text!r} is a file; pass the folder that holds config.json")
            return str(path)
        if _looks_local(text):
            raise ModelNotFoundError(
                f"model path {text!r} does not exist; pass an existing folder with config.json, or a hub id "
                f"such as 'ms://Qwen/Qwen2.5-0.5B-Instruct'"
            )
    repo = text[len("ms://"):] if text.startswith("ms://") else text
    try:
        from modelscope import snapshot_download as ms_snapshot_download

        return ms_snapshot_download(repo)
    except Exception as exc:  # noqa: BLE001
        raise ModelNotFoundError(
            f"cannot resolve model id {text!r} on ModelScope ({type(exc).__name__}: {exc}); check the id and the "
            f"network, or pass the path of a local folder with config.json"
        ) from exc
