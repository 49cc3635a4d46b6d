"""Resolve a model id (``ms://``, ``hf://``, a bare id = ModelScope, or a local folder) to a local folder."""

from __future__ import annotations

import os

from twinkle.errors import HubError, ModelNotFoundError

__all__ = ["resolve_model_dir"]


def resolve_model_dir(model_id: str | os.PathLike[str]) -> str:
    """Return a local folder holding the model, downloading from its hub where needed (``twinkle.hub``).

    Raises:
        ModelNotFoundError: a local path that does not exist, ``hf://`` while ``TWINKLE_FORBID_HF`` is set, or an
            id the hub cannot serve (no network, no such repo); the message names the id.
    """
    from twinkle.hub import resolve_model_path

    text = os.fspath(model_id)
    try:
        path = resolve_model_path(text)
    except HubError as exc:
        raise ModelNotFoundError(f"cannot resolve model id {text!r}: {exc}") from exc
    if not os.path.isdir(path):
        raise ModelNotFoundError(
            f"cannot resolve model id {text!r}: {path!r} is a file; pass the folder with config.json"
        )
    return path
