"""Wrap a model for data parallelism: DDP over a ``dp`` mesh, FSDP2 (``fully_shard``) over an ``fsdp`` mesh.

Both average gradients over the data ranks; the model multiplies by ``data_world_size / global_tokens`` at the
optimizer step, so a sum-reduced loss gives exactly the single-process update for the same global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from twinkle.errors import UnsupportedParallelismError

_UNSUPPORTED_DIMS = ("tp", "pp", "cp", "ep")


def check_mesh(mesh: Any) -> None:
    """Refuse meshes this model cannot honour, naming the reason."""
    if mesh is None:
        return
    used = [d for d in _UNSUPPORTED_DIMS if mesh.get_dim_size(d) > 1]
    if used:
        raise UnsupportedParallelismError(
            f"TransformersModel trains with dp and fsdp meshes only; this mesh uses {', '.join(used)} "
            f"({mesh!r}). Use DeviceMesh.from_sizes(dp_size=..., fsdp_size=...), or MegatronModel for tp/pp/cp/ep"
        )


def needs_wrap(mesh: Any) -> bool:
    return mesh is not None and mesh.world_size > 1 and dist.is_available() and dist.is_initialized()


def uses_fsdp(mesh: Any, strategy: str) -> bool:
    return mesh is not None and (mesh.get_dim_size("fsdp") > 1 or (strategy == "native_fsdp" and mesh.world_size > 1))


def _torch_mesh(mesh: Any, device: torch.device) -> Any:
    from torch.distributed.device_mesh import DeviceMesh as TorchDeviceMesh

    kind = device.type
    if mesh.get_dim_size("fsdp") > 1 and mesh.get_dim_size("dp") > 1:
        # HSDP wants (replicate, shard); our mesh order is fsdp-major
        names = mesh.mesh_dim_names
        order = [names.index("dp"), names.index("fsdp")]
        return TorchDeviceMesh(kind, mesh.mesh.transpose(order), mesh_dim_names=("dp", "fsdp"))
    return TorchDeviceMesh(kind, mesh.mesh.reshape(-1), mesh_dim_names=("fsdp",))


def wrap_fsdp(model: torch.nn.Module, mesh: Any, device: torch.device, fsdp_config: dict | None) -> torch.nn.Module:
    """Shard every decoder layer, then the root, with FSDP2. Returns the same (now sharded) module."""
    from torch.distributed.fsdp import fully_shard

    kwargs = dict(fsdp_config or {})
    torch_mesh = _torch_mesh(mesh, device)
    layer_names = set(getattr(_base_transformer(model), "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_names]
    if not layers:
        raise UnsupportedParallelismError(
            f"FSDP2: found no decoder layers to shard in {type(model).__name__} (its _no_split_modules is empty); "
            f"use a dp mesh instead"
        )
    for layer in layers:
        fully_shard(layer, mesh=torch_mesh, **kwargs)
    fully_shard(model, mesh=torch_mesh, **kwargs)
    return model


def wrap_ddp(model: torch.nn.Module, device: torch.device, ddp_config: dict | None) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    kwargs = dict(ddp_config or {})
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
    return DistributedDataParallel(model, **kwargs)


def _base_transformer(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model under a PEFT wrapper (which holds ``_no_split_modules``)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def set_grad_sync(wrapped: torch.nn.Module, enabled: bool) -> None:
    """Let the next backward all-reduce (or reduce-scatter) gradients, or only accumulate them locally."""
    module: Any = wrapped  # duck-typed: the attributes exist only on the wrapper classes
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(enabled)
    elif hasattr(module, "require_backward_grad_sync"):  # DDP: what no_sync() toggles
        module.require_backward_grad_sync = enabled
