"""``Framework`` (seeding, object all-gather) and ``Torch`` (device probes and helpers), as upstream."""

from __future__ import annotations

import functools
import os
import random
from typing import Any

import numpy as np

__all__ = ["Framework", "Torch"]


class Framework:
    @staticmethod
    def seed_everything(seed: int = 42, full_determinism: bool = False) -> None:
        Torch.seed_everything(seed, full_determinism)

    @staticmethod
    def gather_object(obj: Any, device_mesh: Any = None, process_group: Any = None) -> list:
        """All-gather ``obj`` from every rank of the group; list results are flattened, as upstream."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            parts = [obj]
        else:
            parts = [None] * dist.get_world_size(process_group)
            dist.all_gather_object(parts, obj, group=process_group)
        out: list = []
        for part in parts:
            out.extend(part if isinstance(part, list) else [part])
        return out


class Torch(Framework):
    @staticmethod
    @functools.cache
    def is_torch_available() -> bool:
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
        return True

    @staticmethod
    @functools.cache
    def is_torch_npu_available() -> bool:
        try:
            import torch_npu  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            return False
        return True

    @staticmethod
    @functools.cache
    def is_gpu_available() -> bool:
        import torch

        return torch.cuda.is_available()

    @staticmethod
    @functools.cache
    def is_npu_available() -> bool:
        import torch

        return Torch.is_torch_npu_available() and torch.npu.is_available()  # type: ignore[attr-defined]

    @staticmethod
    def empty_cache() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def synchronize() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    @staticmethod
    def ipc_collect() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.ipc_collect()

    @staticmethod
    def get_current_device() -> int | str:
        import torch

        return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"

    @staticmethod
    def get_device(local_rank: int | None = None) -> str:
        from twinkle.utils.platform import Platform

        local_rank = max(Platform.get_local_rank(), 0) if local_rank is None else local_rank
        if Torch.is_gpu_available():
            return f"cuda:{local_rank}"
        if Torch.is_npu_available():
            return f"npu:{local_rank}"
        return "cpu"

    @staticmethod
    def set_device(local_rank: int | None = None) -> None:
        import torch

        device = Torch.get_device(local_rank)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)

    @staticmethod
    def seed_everything(seed: int = 42, deterministic: bool = False) -> None:
        import torch

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)

    @staticmethod
    def to_local_tensor(tensor: Any) -> Any:
        """The local shard of a DTensor; other values unchanged."""
        to_local = getattr(tensor, "to_local", None)
        return to_local() if callable(to_local) else tensor

    @staticmethod
    def contains_nan(*args: Any, **kwargs: Any) -> bool:
        import torch

        def has(value: Any) -> bool:
            if isinstance(value, torch.Tensor):
                return bool(torch.isnan(value).any()) if value.is_floating_point() else False
            if isinstance(value, dict):
                return any(has(v) for v in value.values())
            if isinstance(value, (list, tuple)):
                return any(has(v) for v in value)
            return False

        return has(args) or has(kwargs)
