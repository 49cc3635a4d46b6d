"""Upstream's streaming safetensors helpers (``SafetensorLazyLoader``, ``StreamingSafetensorSaver``).

Not built in Twinkle Commons (the checkpoint code saves and loads with ``safetensors``/``save_pretrained``
directly); the names raise NotBuiltError naming the feature.
"""

from __future__ import annotations

from twinkle.errors import not_built_attributes

__getattr__ = not_built_attributes("twinkle.utils.safetensors", {
    name: f"twinkle.utils.safetensors.{name}: {feature} is not built in Twinkle Commons; "
    f"use safetensors.torch.load_file / save_file"
    for name, feature in {
        "SafetensorLazyLoader": "lazy per-tensor loading of a safetensors folder",
        "StreamingSafetensorSaver": "streaming, sharded safetensors writing on the save rank",
    }.items()
})
