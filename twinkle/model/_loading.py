"""Loading a ``transformers`` causal LM and choosing its device: one way for the model and the sampler."""

from __future__ import annotations

from typing import Any

import torch

from twinkle.errors import ConfigError
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.platform import Platform

__all__ = ["load_causal_lm", "pick_device"]


def load_causal_lm(model_dir: str | None, config: Any = None, model_cls: Any = None, **hf_kw: Any) -> Any:
    """``model_cls.from_pretrained(model_dir)``, or random weights from ``config`` when there is no folder.

    ``model_cls`` (a class or its name in ``transformers``) defaults to ``config.architectures[0]``, else
    ``AutoModelForCausalLM``. Weights load in float32 unless ``dtype`` (or the older ``torch_dtype``) says
    otherwise: master weights stay float32 and autocast does the low precision.
    """
    import transformers

    if config is None:
        if model_dir is None:
            raise ConfigError("pass a model folder (model_id) or a config to build the model from")
        config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    if model_cls is None:
        arch = (getattr(config, "architectures", None) or [None])[0]
        model_cls = (getattr(transformers, arch, None) if arch else None) or transformers.AutoModelForCausalLM
    elif isinstance(model_cls, str):
        model_cls = getattr(transformers, model_cls)
    if "torch_dtype" in hf_kw:
        hf_kw["dtype"] = hf_kw.pop("torch_dtype")
    hf_kw.setdefault("dtype", torch.float32)
    if model_dir is not None:
        return model_cls.from_pretrained(model_dir, config=config, **hf_kw)
    dtype = hf_kw.pop("dtype")
    if hasattr(model_cls, "_from_config"):
        return model_cls._from_config(config, dtype=dtype)
    return model_cls(config).to(dtype)


def pick_device(device_mesh: DeviceMesh | None) -> torch.device:
    """The CPU when the mesh says so or there is no CUDA, else this process's local accelerator."""
    kind = str(getattr(device_mesh, "device_type", "") or "").lower()
    if kind == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return Platform.get_local_device()
