"""Where this process runs: its rank, its device, the distributed backend to use."""

from __future__ import annotations

import os


class Platform:
    """Facts about the current process and accelerator, read from the launcher's environment and torch.

    ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` are what torchrun (and our Ray workers) set;
    a plain ``python train.py`` is rank 0 of 1.
    """

    @staticmethod
    def device_type() -> str:
        """``'cuda'``, ``'npu'`` or ``'cpu'``: the accelerator torch can use here."""
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if hasattr(torch, "npu") and torch.npu.is_available():
            return "npu"
        return "cpu"

    @staticmethod
    def get_rank() -> int:
        return int(os.environ.get("RANK", "0"))

    @staticmethod
    def get_local_rank() -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    @staticmethod
    def get_world_size() -> int:
        return int(os.environ.get("WORLD_SIZE", "1"))

    @staticmethod
    def get_local_world_size() -> int:
        return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))

    @staticmethod
    def is_master() -> bool:
        return Platform.get_rank() == 0

    @staticmethod
    def is_last_rank() -> bool:
        return Platform.get_rank() == Platform.get_world_size() - 1

    @staticmethod
    def get_local_device(local_rank: int | None = None):
        """The ``torch.device`` this rank should use (``cuda:LOCAL_RANK`` on a GPU machine, else the CPU)."""
        import torch

        kind = Platform.device_type()
        if kind == "cpu":
            return torch.device("cpu")
        return torch.device(f"{kind}:{Platform.get_local_rank() if local_rank is None else local_rank}")

    @staticmethod
    def dist_backend(device_type: str | None = None) -> str:
        """The ``torch.distributed`` backend for a device type: nccl on CUDA, hccl on NPU, gloo on the CPU."""
        kind = (device_type or Platform.device_type()).lower()
        return {"cuda": "nccl", "gpu": "nccl", "npu": "hccl"}.get(kind, "gloo")

    @staticmethod
    def visible_devices_env(device_type: str | None = None) -> str:
        """The environment variable that restricts visible devices for a device type."""
        kind = (device_type or Platform.device_type()).lower()
        return "ASCEND_RT_VISIBLE_DEVICES" if kind == "npu" else "CUDA_VISIBLE_DEVICES"

    @staticmethod
    def device_count() -> int:
        import torch

        kind = Platform.device_type()
        if kind == "cuda":
            return torch.cuda.device_count()
        if kind == "npu":
            return torch.npu.device_count()  # type: ignore[attr-defined]
        return 0

    @staticmethod
    def synchronize() -> None:
        import torch

        if Platform.device_type() == "cuda":
            torch.cuda.synchronize()

    @staticmethod
    def empty_cache() -> None:
        import torch

        if Platform.device_type() == "cuda":
            torch.cuda.empty_cache()
