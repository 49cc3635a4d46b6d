"""Upstream's streaming safetensors helpers (``SafetensorLazyLoader``, ``StreamingSafetensorSaver``).

Not built in Twinkle Commons (the checkpoint code saves and loads with ``safetensors``/``save_pretrained``
directly); the names raise NotBuiltError naming the feature.
"""

from __future__ import annotations

_NOT_BUILT = {
    "SafetensorLazyLoader": "lazy per-tensor loading of a safetensors folder",
    "StreamingSafetensorSaver": "streaming, sharded safetensors writing on the save rank",
}


def __getattr__(name: str):
    if name in _NOT_BUILT:
        from twinkle.errors import NotBuiltError

        raise NotBuiltError(f"twinkle.utils.safetensors.{name}: {_NOT_BUILT[name]} is not built in Twinkle Commons; "
                            f"use safetensors.torch.load_file / save_file")
    raise AttributeError(f"module 'twinkle.utils.safetensors' has no attribute {name!r}")
