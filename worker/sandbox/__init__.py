"""How the worker isolates an attempt: one interface (``Sandbox``), three implementations.

* ``bwrap`` (default): bubblewrap namespaces, read-only system, only the attempt folder writable, no network.
* ``container``: the worker's pod or VM is the sandbox (gVisor, Kata); the worker adds limits only.
* ``none``: a trusted pool; refused unless the donor says so explicitly.

``create_sandbox(isolation)`` picks one; ``worker.runner`` only ever sees a ``Sandbox``.
"""

from __future__ import annotations

from worker.sandbox.base import (
    Isolation,
    LaunchRequest,
    Limits,
    Sandbox,
    SandboxedProcess,
    SandboxError,
    format_bytes,
)
from worker.sandbox.bwrap import BwrapSandbox, bwrap_argv, find_bwrap, gpu_device_nodes, userns_check
from worker.sandbox.none import ContainerSandbox, NoSandbox

__all__ = [
    "BwrapSandbox",
    "ContainerSandbox",
    "Isolation",
    "LaunchRequest",
    "Limits",
    "NoSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxedProcess",
    "bwrap_argv",
    "create_sandbox",
    "find_bwrap",
    "format_bytes",
    "gpu_device_nodes",
    "userns_check",
]


def create_sandbox(
    isolation: Isolation, *, bwrap: str | None = None, use_cgroups: bool = True, egress_allow: tuple[str, ...] = ()
) -> Sandbox:
    """The sandbox for ``isolation``; ``SandboxError`` (saying what to do) when bwrap cannot run here."""
    if isolation == "bwrap":
        return BwrapSandbox(bwrap, use_cgroups=use_cgroups, egress_allow=egress_allow)
    if isolation == "container":
        return ContainerSandbox()
    if isolation == "none":
        return NoSandbox()
    raise SandboxError(f"unknown isolation {isolation!r}; choose bwrap, container or none")
