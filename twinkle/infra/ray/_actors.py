"""Building a component in Ray actors: :func:`make_remote` places one actor per rank of a DeviceGroup (one for
``execute='first'``), sets each up like a torchrun rank (rank, world, master address, the driver's job settings)
and returns the driver's :class:`~._proxy.RemoteProxy`."""

from __future__ import annotations

import inspect
import os
from typing import Any

from twinkle.errors import ConfigError
from twinkle.infra.ray._call_queue import CALLS
from twinkle.infra.ray._cluster import GroupPlacement, cluster_settings, get_placement
from twinkle.infra.ray._proxy import RemoteProxy, proxy_class
from twinkle.infra.ray._results import get_fail_fast
from twinkle.infra.ray._worker import TwinkleWorker
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.infra.ray")

__all__ = ["make_remote"]

# A bundle's resource is the device; every actor placed on it takes only a sliver, so a model, a sampler and a
# dataset can share a group's ranks the way they share a torchrun rank's device.
_SHARE = 0.01

_actor_class: Any = None


def _remote_worker_class() -> Any:
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(TwinkleWorker)
    return _actor_class


def _find_mesh(args: tuple, kwargs: dict) -> DeviceMesh | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, DeviceMesh):
            return value
    return None


def _replace_mesh(args: tuple, kwargs: dict, mesh: DeviceMesh) -> tuple[tuple, dict]:
    return (tuple(mesh if isinstance(a, DeviceMesh) else a for a in args),
            {k: (mesh if isinstance(v, DeviceMesh) else v) for k, v in kwargs.items()})


def _default_device_type(placement: GroupPlacement) -> str:
    return "cpu" if placement.resource == "CPU" else ("npu" if placement.resource == "NPU" else "cuda")


def _dataloader_min_batch(cls: type, args: tuple, kwargs: dict) -> None:
    """A Ray DataLoader hands whole batches to ``slice_dp`` calls: drop a short last batch (min = batch_size)."""
    init = cls.__init__  # type: ignore[misc]  # the class's own __init__ is what is inspected
    try:
        params = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return
    if "batch_size" not in params or "min_batch_size" not in params:
        return
    try:
        bound = inspect.signature(init).bind_partial(None, *args, **kwargs).arguments
    except TypeError:
        return
    if bound.get("min_batch_size") is None and bound.get("batch_size") is not None:
        kwargs["min_batch_size"] = bound["batch_size"]


# The driver's settings that a torchrun rank would inherit from its launcher. A Ray cluster that the driver joined
# (RAY_ADDRESS) started its workers with its own environment, so these are handed over explicitly.
_INHERITED_PREFIXES = ("TWINKLE_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "MODELSCOPE_", "TOKENIZERS_", "NCCL_",
                       "GLOO_", "TORCH_")
_INHERITED_NAMES = ("OMP_NUM_THREADS", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "CUBLAS_WORKSPACE_CONFIG")
_NOT_INHERITED = ("TWINKLE_RAY_WORKER", "TWINKLE_RAY_GROUP", "TWINKLE_MODE")


def _job_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if (key.startswith(_INHERITED_PREFIXES) or key in _INHERITED_NAMES) and key not in _NOT_INHERITED
    }


def _actor_options(placement: GroupPlacement, rank: int) -> dict[str, Any]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    options: dict[str, Any] = {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=placement.placement_group, placement_group_bundle_index=rank
        ),
        "num_cpus": 0,
    }
    if placement.resource == "CPU":
        options["num_cpus"] = _SHARE
    elif placement.resource == "GPU":
        # Ray sets CUDA_VISIBLE_DEVICES from this request; several devices per worker cannot be shared.
        options["num_gpus"] = _SHARE if placement.per_rank == 1 else placement.per_rank
    else:
        options["resources"] = {placement.resource: _SHARE if placement.per_rank == 1 else placement.per_rank}
    return options


def make_remote(cls: type, execute: str, args: tuple, kwargs: dict) -> RemoteProxy:
    """Build ``cls(*args, **kwargs)`` in Ray actors on ``kwargs['remote_group']`` and return its proxy.

    Raises:
        ConfigError: Ray mode not initialised, an unknown group, or a mesh that does not fit the group.
        RemoteCallError: the constructor failed in a worker (the remote traceback is in the message).
    """
    import ray

    from twinkle.infra import _state

    CALLS.flush()
    kwargs = dict(kwargs)
    group_name = kwargs.pop("remote_group")
    placement = get_placement(group_name)
    settings = cluster_settings()
    device_type = _default_device_type(placement)
    mesh: DeviceMesh | None
    if execute == "first":
        n = 1
        mesh = DeviceMesh.from_sizes(dp_size=1, device_type=device_type)
        args, kwargs = _replace_mesh(args, kwargs, mesh)
        _dataloader_min_batch(cls, args, kwargs)
    else:
        n = placement.num_ranks
        mesh = _find_mesh(args, kwargs)
        if mesh is None:
            global_mesh = settings.global_mesh
            mesh = global_mesh if global_mesh is not None and global_mesh.world_size == n else \
                DeviceMesh.from_sizes(dp_size=n, device_type=device_type)
        if mesh.world_size != n:
            raise ConfigError(
                f"{cls.__name__} on group {group_name!r}: its DeviceMesh spans {mesh.world_size} ranks but the group "
                f"has {n}; give a mesh whose sizes multiply to {n}"
            )
    label = cls.__name__
    actor_cls = _remote_worker_class()
    workers = [actor_cls.options(**_actor_options(placement, rank)).remote(label, rank) for rank in range(n)]
    try:
        master_addr, master_port = get_fail_fast([workers[0].address.remote()], f"{label}.__init__")[0]
        local = placement.local_ranks()
        job_env = _job_environment()
        init_kwargs = {
            "seed": settings.seed,
            "global_device_mesh": mesh,
            "full_determinism": settings.options.get("full_determinism", False),
            "lazy_collect": _state.get_lazy_collect(),
        }
        builds = []
        for rank, worker in enumerate(workers):
            local_rank, local_world = local[rank] if execute != "first" else (0, 1)
            env = {
                "RANK": str(rank),
                "WORLD_SIZE": str(n),
                "LOCAL_RANK": str(local_rank),
                "LOCAL_WORLD_SIZE": str(local_world),
                "GROUP_RANK": "0",
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
                "TWINKLE_RAY_GROUP": group_name,
            }
            builds.append(worker.build.remote({**job_env, **env}, init_kwargs, cls, args, kwargs, os.getcwd()))
        get_fail_fast(builds, f"{label}.__init__")
    except BaseException:
        for worker in workers:
            ray.kill(worker)
        raise
    CALLS.install_exit_hook()
    logger.debug("%s: %d Ray worker(s) on group %r, mesh %r", label, n, group_name, mesh)
    return proxy_class(cls)(cls, workers, group_name, mesh, execute, _state.get_lazy_collect(), label)
