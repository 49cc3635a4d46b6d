"""Lazy imports of optional GPU dependencies, failing with an error that names the fix.

``import twinkle`` never imports vLLM, megatron-core or TransformerEngine; a component that needs one calls
:func:`requires` when it is built, and :func:`require_cuda` when it needs an NVIDIA GPU.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from twinkle.errors import MissingDependencyError

__all__ = ["require_cuda", "requires"]


def requires(module: str, *, extra: str, what: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra that installs it.

    Args:
        module: the import name (``'vllm'``, ``'megatron.core'``).
        extra: the ``twinkle-commons`` extra that brings it (``'vllm'``, ``'megatron'``).
        what: the component that needs it, for the message.
        package: the pip name when it differs from the import name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{what} needs {package or module.split('.')[0]}, which is not installed here ({exc}); install it with "
            f"pip install 'twinkle-commons[{extra}]' on a machine with an NVIDIA GPU"
        ) from exc


def require_cuda(what: str, extra: str | None = None, min_gpus: int = 1) -> None:
    """Raise :class:`MissingDependencyError` unless torch sees at least ``min_gpus`` CUDA devices."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count >= min_gpus:
        return
    hint = f" (and pip install 'twinkle-commons[{extra}]')" if extra else ""
    raise MissingDependencyError(
        f"{what} needs {min_gpus} NVIDIA GPU(s) with a CUDA build of torch, but this process sees {count} "
        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); run it on a GPU machine{hint}"
        + ("; on the CPU use TorchSampler and the gloo checkpoint engine instead" if extra == "vllm" else "")
    )
