"""Where this process runs: its rank, its device, the distributed backend to use."""

from __future__ import annotations

import os


class Platform:
    """Facts about the current process and accelerator, read from the launcher's environment and torch.

    ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` are what torchrun (and our Ray workers) set.
    As upstream, ``get_rank()``/``get_local_rank()`` are **-1** when the variable is unset (a plain
    ``python train.py``); the predicates ``is_master``/``is_local_master`` treat -1 like 0.

    ``get_platform()`` returns one of the subclasses ``GPU``, ``NPU``, ``MPS`` or ``CPU``. Upstream reports ``GPU``
    on a CPU-only host; ours returns ``CPU`` (``device_prefix() == 'cpu'``, backend gloo) so that
    ``DeviceMesh(device_type=Platform.get_platform().device_prefix())`` runs on a CPU. ``get_platform('GPU')``
    still returns the GPU class.
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
        """The global rank, -1 when ``RANK`` is unset (one process, no launcher)."""
        return int(os.environ.get("RANK", "-1"))

    @staticmethod
    def get_local_rank() -> int:
        """The rank on this node, -1 when ``LOCAL_RANK`` is unset."""
        return int(os.environ.get("LOCAL_RANK", "-1"))

    @staticmethod
    def get_world_size() -> int:
        """``WORLD_SIZE``, else ``_PATCH_WORLD_SIZE``, else 1."""
        return int(os.environ.get("WORLD_SIZE") or os.environ.get("_PATCH_WORLD_SIZE") or "1")

    @staticmethod
    def get_nnodes() -> int:
        return int(os.environ.get("NNODES") or os.environ.get("GROUP_WORLD_SIZE") or "1")

    @staticmethod
    def get_node_rank() -> int:
        return int(os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0")

    @staticmethod
    def is_local_master() -> bool:
        return Platform.get_local_rank() in (-1, 0)

    @staticmethod
    def get_peer_index(target: int, rank: int | None = None, world_size: int | None = None) -> slice:
        """This rank's share of ``range(target)`` split evenly over ``world_size`` ranks (extras go first)."""
        rank = max(Platform.get_rank() if rank is None else rank, 0)
        world_size = Platform.get_world_size() if world_size is None else world_size
        base, extra = divmod(target, world_size)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (1 if rank < extra else 0))

    @staticmethod
    def get_platform(name: str | None = None) -> type[Platform]:
        """The platform class: by name (GPU/CUDA, NPU, MPS, CPU), else detected from torch."""
        if name is not None:
            key = name.upper()
            table = {"GPU": GPU, "CUDA": GPU, "NPU": NPU, "MPS": MPS, "CPU": CPU}
            if key not in table:
                raise ValueError(f"unknown platform {name!r}; use one of GPU, CUDA, NPU, MPS, CPU")
            return table[key]
        kind = Platform.device_type()
        if kind == "cuda":
            return GPU
        if kind == "npu":
            return NPU
        import torch

        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return MPS
        return CPU

    @staticmethod
    def visible_device_env() -> str | None:
        return Platform.get_platform().visible_device_env()

    @staticmethod
    def device_prefix() -> str:
        return Platform.get_platform().device_prefix()

    @staticmethod
    def device_backend() -> str:
        return Platform.get_platform().device_backend()

    @staticmethod
    def get_local_world_size() -> int:
        return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))

    @staticmethod
    def is_master() -> bool:
        return Platform.get_rank() in (-1, 0)

    @staticmethod
    def is_last_rank() -> bool:
        return Platform.get_rank() in (-1, Platform.get_world_size() - 1)

    @staticmethod
    def get_local_device(local_rank: int | None = None):
        """The ``torch.device`` this rank should use (``cuda:LOCAL_RANK`` on a GPU machine, else the CPU)."""
        import torch

        kind = Platform.device_type()
        if kind == "cpu":
            return torch.device("cpu")
        return torch.device(f"{kind}:{max(Platform.get_local_rank(), 0) if local_rank is None else local_rank}")

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


class GPU(Platform):
    @staticmethod
    def visible_device_env() -> str:
        return "CUDA_VISIBLE_DEVICES"

    @staticmethod
    def device_prefix() -> str:
        return "cuda"

    @staticmethod
    def device_backend() -> str:
        return "nccl"

    @staticmethod
    def get_local_device(local_rank: int | None = None) -> str:
        return f"cuda:{max(Platform.get_local_rank(), 0) if local_rank is None else local_rank}"


class NPU(Platform):
    @staticmethod
    def visible_device_env() -> str:
        return "ASCEND_RT_VISIBLE_DEVICES"

    @staticmethod
    def device_prefix() -> str:
        return "npu"

    @staticmethod
    def device_backend() -> str:
        return "hccl"


class MPS(Platform):
    @staticmethod
    def visible_device_env() -> None:
        return None

    @staticmethod
    def device_prefix() -> str:
        return "mps"

    @staticmethod
    def device_backend() -> str:
        return "gloo"


class CPU(Platform):
    """Ours only (upstream reports GPU on a CPU host): the CPU with the gloo backend."""

    @staticmethod
    def visible_device_env() -> None:
        return None

    @staticmethod
    def device_prefix() -> str:
        return "cpu"

    @staticmethod
    def device_backend() -> str:
        return "gloo"
