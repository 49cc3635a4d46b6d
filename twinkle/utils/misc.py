"""Small upstream helpers: package checks, free ports, the node IP, remote-code trust, device moves."""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

__all__ = ["check_unsafe", "exists", "find_all_linears", "find_free_port", "find_node_ip", "requires",
           "to_device", "trust_remote_code"]


@functools.cache
def _check(requirement: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    req = Requirement(requirement)
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        return f"{req.name} is not installed (pip install '{requirement}')"
    if req.specifier and not req.specifier.contains(installed, prereleases=True):
        return f"{req.name} {installed} is installed but {requirement} is required (pip install '{requirement}')"
    return None


def requires(requirement: str) -> None:
    """Raise ImportError unless the PEP 508 ``requirement`` (``'peft>=0.11'``) is met."""
    problem = _check(requirement)
    if problem:
        raise ImportError(problem)


def exists(requirement: str) -> bool:
    """Whether the PEP 508 ``requirement`` is met."""
    return _check(requirement) is None


def find_free_port(address: str = "", start_port: int | None = None, retry: int = 100) -> int:
    """The first port that binds on ``address``, trying ``start_port`` upwards (default: one the OS picks)."""
    for i in range(retry):
        port = 0 if start_port is None else start_port + i
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port found from {start_port} after {retry} tries")


def find_node_ip() -> str | None:
    """The first non-loopback IPv4 address (virtual interfaces last), or None."""
    try:
        import psutil
    except ImportError:
        return None
    virtual = ("docker", "veth", "br-", "virbr", "lo", "tun", "tap", "cni", "flannel", "cali")
    candidates = []
    for name, addresses in psutil.net_if_addrs().items():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                candidates.append((name.startswith(virtual), address.address))
    candidates.sort(key=lambda c: c[0])
    return candidates[0][1] if candidates else None


def trust_remote_code() -> bool:
    """``TWINKLE_TRUST_REMOTE_CODE != '0'``."""
    return os.environ.get("TWINKLE_TRUST_REMOTE_CODE", "1") != "0"


def check_unsafe(*args: Any, **kwargs: Any) -> None:
    """When remote code is not trusted, raise ValueError on any callable or class nested in the arguments."""
    if trust_remote_code():
        return

    def walk(value: Any, where: str) -> None:
        if isinstance(value, type) or (callable(value) and not isinstance(value, (str, bytes))):
            raise ValueError(f"{where} is a callable ({value!r}) and TWINKLE_TRUST_REMOTE_CODE=0 forbids them")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}[{k!r}]")
        elif isinstance(value, (list, tuple, set)):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    for i, a in enumerate(args):
        walk(a, f"argument {i}")
    for k, v in kwargs.items():
        walk(v, f"argument {k!r}")


def to_device(data: Any, device: Any, non_blocking: bool = False) -> Any:
    """Move every tensor in nested dicts/lists/tuples to ``device``, keeping the container types."""
    import torch

    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=non_blocking)
    if isinstance(data, dict):
        return type(data)((k, to_device(v, device, non_blocking)) for k, v in data.items())
    if isinstance(data, (list, tuple)):
        items = [to_device(v, device, non_blocking) for v in data]
        return type(data)(*items) if hasattr(data, "_fields") else type(data)(items)
    return data


def find_all_linears(model: Any, model_arch: Any = None, extra_layers: list | None = None,
                     sub_module: str | None = None) -> list[str]:
    """Short suffixes of the model's linear layers (for LoRA ``target_modules``), excluding the head, score,
    classifier and LoRA modules."""
    import torch

    root = model.get_submodule(sub_module) if sub_module else model
    kinds = (torch.nn.Linear, *(extra_layers or []))
    excluded = ("lm_head", "score", "classifier", "output_layer", "v_head")
    names = set()
    for name, module in root.named_modules():
        if not isinstance(module, kinds) or "lora_" in name or name.split(".")[-1] in excluded:
            continue
        names.add(name.split(".")[-1])
    return sorted(names)
