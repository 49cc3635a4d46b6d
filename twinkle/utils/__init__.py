"""Small helpers shared by every twinkle component: the mesh, the platform, logging, lookup by name, and
upstream's utilities (``requires``, ``find_free_port``, ``Torch``, ...). ``twinkle.utils.parallel`` (file locks)
is imported on use: importing it creates ``./.locks``."""

from __future__ import annotations

from typing import Any

from twinkle.utils.construct import construct_class
from twinkle.utils.device_mesh import DeviceGroup, DeviceMesh
from twinkle.utils.framework import Framework, Torch
from twinkle.utils.logger import get_logger
from twinkle.utils.misc import (
    check_unsafe,
    exists,
    find_all_linears,
    find_free_port,
    find_node_ip,
    requires,
    to_device,
    trust_remote_code,
)
from twinkle.utils.platform import CPU, GPU, MPS, NPU, Platform
from twinkle.utils.plugin import Plugin

framework_util = Framework
torch_util = Torch

__all__ = [
    "CPU",
    "GPU",
    "MPS",
    "NPU",
    "DeviceGroup",
    "DeviceMesh",
    "Framework",
    "Platform",
    "Plugin",
    "Torch",
    "check_unsafe",
    "construct_class",
    "exists",
    "find_all_linears",
    "find_free_port",
    "find_node_ip",
    "framework_util",
    "get_logger",
    "requires",
    "selective_log_softmax",
    "to_device",
    "torch_util",
    "trust_remote_code",
]


def selective_log_softmax(logits: Any, index: Any, return_entropy: bool = False) -> Any:
    """Upstream's helper: ``log_softmax(logits)`` gathered at ``index`` (no masking), plus the entropy when asked.
    ``twinkle.loss.selective_log_softmax`` is the masked variant the losses use."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    gathered = logp.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    if return_entropy:
        return gathered, -(logp.exp() * logp).sum(-1)
    return gathered
