"""``remote_class`` and ``remote_function``: one component code path for local and Ray mode.

Local mode: functions run unchanged; a decorated class gets the global mesh injected into its ``DeviceMesh``
argument (and a DataLoader its ``min_batch_size``), and accepts and drops ``remote_group=``. Ray mode, on the
driver, with ``remote_group=NAME``: construction returns ``twinkle.infra.ray.make_remote(cls, execute, args,
kwargs)``, a proxy. The decorated class stays the same class object, so isinstance, subclassing and pickling work.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twinkle.errors import ConfigError
from twinkle.infra import _state
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.infra")

EXECUTE = ("all", "first", "peer")
DISPATCH = ("slice", "all", "slice_dp")
COLLECT = ("none", "flatten", "sum", "first", "last_pp", "mean")

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])


def _mesh_param(init: Callable[..., Any]) -> str | None:
    """The name of the constructor parameter annotated ``DeviceMesh`` (string annotations included)."""
    try:
        params = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return None
    for name, param in params.items():
        ann = param.annotation
        if ann is inspect.Parameter.empty:
            continue
        if ann is DeviceMesh or (isinstance(ann, str) and "DeviceMesh" in ann):
            return name
        if "DeviceMesh" in getattr(ann, "__args__", ()) or DeviceMesh in getattr(ann, "__args__", ()):
            return name
    return None


def _inject_defaults(init: Callable[..., Any], mesh_param: str | None, self: Any, args: tuple, kwargs: dict) -> None:
    mesh = _state.get_global_mesh()
    if mesh is None or mesh_param is None:
        return
    sig = inspect.signature(init)
    try:
        bound = sig.bind_partial(self, *args, **kwargs).arguments
    except TypeError:
        return  # let the real __init__ raise its own, clearer error
    on_ray_driver = _state.get_mode() == "ray" and _state.is_driver()
    if on_ray_driver:
        # The driver is one process, not a rank: a component built here (a DataLoader without remote_group)
        # must see whole global batches, which the model's slice_dp dispatch then splits over the data ranks.
        mesh = DeviceMesh.from_sizes(dp_size=1, device_type=getattr(mesh, "device_type", "cpu"))
    if bound.get(mesh_param) is None:
        kwargs[mesh_param] = mesh
    if "min_batch_size" in sig.parameters and bound.get("min_batch_size") is None:
        batch_size = bound.get("batch_size")
        kwargs["min_batch_size"] = batch_size if on_ray_driver and batch_size else mesh.data_world_size


def remote_class(execute: str = "all") -> Callable[[C], C]:
    """Class decorator: make a component placeable on a device group.

    Args:
        execute: in Ray mode, ``'all'`` builds one actor per rank of the group, ``'first'`` a single actor
            (its mesh forced to dp=1), ``'peer'`` one actor per rank sharing the driver's peers.
    """
    if execute not in EXECUTE:
        raise ConfigError(f"remote_class(execute={execute!r}): use one of {', '.join(EXECUTE)}")

    def decorate(cls: C) -> C:
        original_init = cls.__dict__.get("__init__")
        if original_init is not None:
            mesh_param = _mesh_param(original_init)

            @functools.wraps(original_init)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                group = kwargs.pop("remote_group", None)
                if group is not None:
                    logger.debug("%s: remote_group=%r ignored in %s mode", cls.__name__, group, _state.get_mode())
                _inject_defaults(original_init, mesh_param, self, args, kwargs)
                original_init(self, *args, **kwargs)

            cls.__init__ = __init__  # type: ignore[misc]

        original_new = cls.__dict__.get("__new__")

        def __new__(klass: type, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("remote_group") is not None and _state.get_mode() == "ray" and _state.is_driver():
                from twinkle.infra.ray import make_remote  # lazy: Ray is optional

                return make_remote(klass, cast(Any, klass)._twinkle_remote_class["execute"], args, kwargs)
            if original_new is not None:
                return original_new(klass, *args, **kwargs)
            # cls is a class (C is bound to type), but mypy reads a TypeVar'd class as an instance here
            parent_new = super(cls, klass).__new__  # type: ignore[arg-type]
            if parent_new is object.__new__:
                return object.__new__(klass)
            return parent_new(klass, *args, **kwargs)

        cls.__new__ = staticmethod(__new__)  # type: ignore[assignment]
        cls._twinkle_remote_class = {"execute": execute}  # type: ignore[attr-defined]
        return cls

    return decorate


def remote_function(
    dispatch: str | Callable[..., Any] = "slice",
    execute: str = "all",
    collect: str | Callable[..., Any] = "none",
    sync: bool = False,
    lazy_collect: bool | None = None,
) -> Callable[[F], F]:
    """Method decorator: how a call on a Ray proxy is spread over workers and gathered back.

    Local mode runs the function unchanged; the options are stored as ``fn._twinkle_remote``.

    Args:
        dispatch: ``'slice'`` (split list args evenly), ``'all'`` (same args everywhere), ``'slice_dp'`` (per data
            rank, via ``DeviceMesh.get_slice``), or a callable.
        execute: ``'all'``, ``'first'`` or ``'peer'`` workers run the call.
        collect: ``'none'``, ``'flatten'``, ``'sum'``, ``'first'``, ``'last_pp'``, ``'mean'``, or a callable.
        sync: run the call synchronously even when lazy collection is on.
        lazy_collect: override the ``initialize(lazy_collect=...)`` setting for this method.
    """
    if isinstance(dispatch, str) and dispatch not in DISPATCH:
        raise ConfigError(f"remote_function(dispatch={dispatch!r}): use one of {', '.join(DISPATCH)} or a callable")
    if execute not in EXECUTE:
        raise ConfigError(f"remote_function(execute={execute!r}): use one of {', '.join(EXECUTE)}")
    if isinstance(collect, str) and collect not in COLLECT:
        raise ConfigError(f"remote_function(collect={collect!r}): use one of {', '.join(COLLECT)} or a callable")

    def decorate(fn: F) -> F:
        fn._twinkle_remote = {  # type: ignore[attr-defined]
            "dispatch": dispatch,
            "execute": execute,
            "collect": collect,
            "sync": sync,
            "lazy_collect": lazy_collect,
        }
        return fn

    return decorate


def is_master() -> bool:
    """True on global rank 0 (the driver in Ray mode)."""
    if _state.get_mode() == "ray" and _state.is_driver():
        return True
    from twinkle.utils.platform import Platform

    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except Exception:  # noqa: BLE001
        pass
    return Platform.is_master()


def get_device_placement() -> str:
    """A human-readable table of the device groups and the global mesh (Ray mode: as Ray placed them)."""
    if _state.get_mode() == "ray":
        try:
            from twinkle.infra import ray as ray_mod

            placement = getattr(ray_mod, "get_device_placement", None)
            if placement is not None:
                return placement()
        except ImportError:
            pass
    lines = [f"mode: {_state.get_mode()}"]
    for group in _state.get_groups():
        lines.append(f"group {group.name!r}: ranks={group.ranks} device_type={group.device_type}")
    mesh = _state.get_global_mesh()
    if mesh is not None:
        lines.append(f"global mesh: {mesh!r} world_size={mesh.world_size} data_world_size={mesh.data_world_size}")
    return "\n".join(lines)
