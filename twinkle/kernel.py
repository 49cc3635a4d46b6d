"""``twinkle.kernel``: swap model layers for faster implementations. Importing needs no kernel package.

``kernelize(model, mapping=None)`` changes the model in place and returns it:

* keys: an ``nn.Module`` subclass (every submodule of exactly that type gets its ``__class__`` swapped), or a
  dotted attribute path (the attribute is replaced with ``setattr``); any other key raises TypeError;
* values: ``{device_prefix: impl}`` applies only on the matching platform (``Platform.device_prefix()``); a
  ``HubRef`` from ``hub('repo:Layer', revision=... | version=...)`` needs the ``kernels`` package; anything else
  is used as the replacement;
* ``mapping=None`` applies ``npu_builtin()`` on an NPU and does nothing elsewhere.

A ``TransformersModel`` may be passed: its ``.model`` (the Hugging Face module) is kernelized.
``liger_builtin(model)`` needs liger-kernel (a GPU package) and raises ImportError without it, as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["HubRef", "hub", "kernelize", "liger_builtin", "npu_builtin"]


@dataclass(frozen=True)
class HubRef:
    """A kernel layer on the hub, fetched with the ``kernels`` package when applied."""

    repo_layer: str
    revision: str | None = None
    version: str | None = None

    def load(self) -> Any:
        try:
            import kernels  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError(
                f"hub kernel {self.repo_layer!r} needs the 'kernels' package (pip install kernels)"
            ) from exc
        repo, _, layer = self.repo_layer.partition(":")
        kwargs = {"revision": self.revision} if self.revision else {"version": self.version}
        return getattr(kernels.get_kernel(repo, **kwargs).layers, layer)


def hub(repo_layer: str, revision: str | None = None, version: str | None = None) -> HubRef:
    """A reference to ``'org/repo:LayerName'`` on the kernel hub; exactly one of ``revision`` and ``version``."""
    if (revision is None) == (version is None):
        raise ValueError("hub(...) takes exactly one of revision= and version=")
    if ":" not in repo_layer:
        raise ValueError(f"hub kernel {repo_layer!r} must look like 'org/repo:LayerName'")
    return HubRef(repo_layer, revision, version)


def _module_of(model: Any) -> torch.nn.Module:
    inner = getattr(model, "model", None)
    if not isinstance(model, torch.nn.Module) and isinstance(inner, torch.nn.Module):
        return inner
    if isinstance(model, torch.nn.Module):
        return model
    raise TypeError(f"kernelize needs a torch module or a TransformersModel, got {type(model).__name__}")


def _pick(value: Any) -> Any:
    from twinkle.utils.platform import Platform

    if isinstance(value, dict):
        return value.get(Platform.device_prefix())
    if isinstance(value, HubRef):
        return value.load()
    return value


def kernelize(model: Any, mapping: dict | None = None) -> Any:
    """Apply ``mapping`` to the model in place; returns ``model``."""
    from twinkle.utils.platform import Platform

    if mapping is None:
        mapping = npu_builtin() if Platform.device_prefix() == "npu" else {}
    module = _module_of(model)
    for key, value in mapping.items():
        impl = _pick(value)
        if impl is None:
            continue
        if isinstance(key, type) and issubclass(key, torch.nn.Module):
            for sub in module.modules():
                if type(sub) is key:
                    sub.__class__ = impl
        elif isinstance(key, str):
            parent_path, _, attr = key.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            setattr(parent, attr, impl)
        else:
            raise TypeError(f"kernelize keys are nn.Module classes or dotted attribute paths, got {key!r}")
    return model


def liger_builtin(model: Any = None) -> Any:
    """Liger's RMSNorm / SwiGLU / RoPE / fused kernels for the supported families (needs liger-kernel)."""
    try:
        from liger_kernel.transformers import (  # type: ignore[import-not-found]
            _apply_liger_kernel_to_instance,
        )
    except ImportError as exc:
        raise ImportError("liger_builtin needs the liger-kernel package (pip install liger-kernel; CUDA only)") from exc
    if model is not None:
        _apply_liger_kernel_to_instance(model=_module_of(model))
    return model


def npu_builtin() -> dict:
    """NPU-gated kernel entries: ``{}`` here (no NPU kernels are shipped), so ``kernelize`` is a no-op off NPU."""
    return {}
