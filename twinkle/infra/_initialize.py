"""``twinkle.initialize``: choose the mode, seed every RNG, set up the default group and mesh."""

from __future__ import annotations

import atexit
import os
import random
from typing import Any

from twinkle.errors import ConfigError
from twinkle.infra import _state
from twinkle.infra._job_env import deterministic_requested
from twinkle.utils.device_mesh import DeviceGroup, DeviceMesh
from twinkle.utils.logger import get_logger
from twinkle.utils.platform import Platform

logger = get_logger("twinkle.infra")


def seed_everything(seed: int, full_determinism: bool = False) -> None:
    """Seed python, numpy and torch (every device); with ``full_determinism`` also force deterministic kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)  # inherited by workers and child processes
    if full_determinism:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _init_process_group(device_type: str) -> None:
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        return
    backend = Platform.dist_backend(device_type if device_type.lower() != "cpu" else "cpu")
    if backend == "nccl":
        import torch

        torch.cuda.set_device(max(Platform.get_local_rank(), 0))
    dist.init_process_group(backend=backend)
    # The group this call made is released before interpreter teardown: left to the destructors, gloo's threads
    # can outlive their process group and abort the rank at exit ("terminate called without an active exception")
    # after the script itself succeeded.
    atexit.register(_destroy_process_group)
    logger.debug("initialised torch.distributed (%s), rank %d of %d", backend, dist.get_rank(), dist.get_world_size())


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def initialize(
    mode: str | None = None,
    nproc_per_node: int = 8,
    ncpu_proc_per_node: int = 8,
    seed: int = 42,
    full_determinism: bool = False,
    groups: list[DeviceGroup] | None = None,
    global_device_mesh: DeviceMesh | None = None,
    lazy_collect: bool = True,
    name: str | None = None,
    notifier: Any = None,
) -> None:
    """Set up twinkle for this process.

    Args:
        mode: ``'local'`` (one process or torchrun) or ``'ray'``; default ``$TWINKLE_MODE``, else ``'local'``.
        nproc_per_node: accelerators per node (Ray mode; shown in the placement report).
        ncpu_proc_per_node: CPU worker processes per node (Ray mode; shown in the placement report).
        seed: seed for python, numpy and torch.
        full_determinism: also force deterministic torch kernels (in Ray mode on every actor too); forced on when
            ``TWINKLE_DETERMINISTIC=1`` is set (the platform sets it for every attempt).
        groups: the ``DeviceGroup`` list; required in Ray mode, default one group over WORLD_SIZE ranks locally.
        global_device_mesh: the mesh components get when they are not given one; default 1-D dp over the world.
        lazy_collect: Ray mode: return futures from remote calls until their value is needed.
        name: a name for this run (the Ray namespace of a cluster this call connects to or starts).
        notifier: a callable (``twinkle.notifier.Notifier``) told once about each distinct exception a remote call
            raises on the driver (Ray mode), before it is raised.

    Raises:
        ConfigError: unknown mode, Ray mode without groups, or a mesh whose size is not WORLD_SIZE.
    """
    mode = mode or os.environ.get("TWINKLE_MODE") or "local"
    if mode not in _state.MODES:
        raise ConfigError(f"unknown twinkle mode {mode!r}; use 'local' (python or torchrun) or 'ray'")
    if deterministic_requested():  # the platform asks, so a replay elsewhere reproduces this run's steps
        full_determinism = True
    seed_everything(seed, full_determinism)

    if mode == "local":
        world = Platform.get_world_size()
        device_type = Platform.device_type()
        if groups is None:
            groups = [DeviceGroup(name="default", ranks=world, device_type=device_type)]
        if global_device_mesh is None:
            global_device_mesh = DeviceMesh.from_sizes(dp_size=world, device_type=device_type)
        if global_device_mesh.world_size != world:
            raise ConfigError(
                f"the global device mesh spans {global_device_mesh.world_size} ranks but WORLD_SIZE is {world}; "
                f"launch with torchrun --nproc_per_node {global_device_mesh.world_size} or resize the mesh"
            )
        _state.set_state(
            mode=mode, groups=list(groups), global_mesh=global_device_mesh, seed=seed, lazy_collect=lazy_collect,
            name=name, notifier=notifier, initialized=True,
        )
        if world > 1:
            _init_process_group(global_device_mesh.device_type if torch_has_cuda() else "cpu")
        return

    if not groups:
        raise ConfigError("twinkle.initialize(mode='ray') needs groups=[DeviceGroup(name=..., ranks=..., ...)]")
    _state.set_state(
        mode=mode, groups=list(groups), global_mesh=global_device_mesh, seed=seed, lazy_collect=lazy_collect,
        name=name, notifier=notifier, initialized=True,
    )
    from twinkle.infra.ray import init_ray  # lazy: Ray is an optional dependency

    init_ray(
        groups=list(groups),
        nproc_per_node=nproc_per_node,
        ncpu_proc_per_node=ncpu_proc_per_node,
        global_device_mesh=global_device_mesh,
        seed=seed,
        name=name,
        full_determinism=full_determinism,
    )


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
