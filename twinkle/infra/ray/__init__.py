"""Ray mode: the same components, placed on DeviceGroups as Ray actors.

``twinkle.initialize(mode='ray', groups=[...])`` calls :func:`init_ray`; a ``remote_class`` component built with
``remote_group=NAME`` on the driver becomes :func:`make_remote`'s :class:`RemoteProxy`. Ray itself is imported
only when one of these runs, so ``import twinkle`` works without Ray installed.

The modules, along their seams: ``_cluster`` (connect, placement groups), ``_actors`` (build a component's actors),
``_proxy`` (the driver's handle), ``_call_queue`` (batching and unread results, one queue per driver),
``_lazy`` (futures), ``_results`` (waiting and Ray's errors), ``_dispatch`` (splitting arguments, merging
results), ``_worker`` (the actor), ``_serialization`` (tensors across Ray).
"""

from twinkle.infra.ray._actors import make_remote
from twinkle.infra.ray._cluster import get_device_placement, get_global_device_mesh, init_ray, shutdown_ray
from twinkle.infra.ray._dispatch import collect_results, dispatch_args
from twinkle.infra.ray._errors import ClusterResourceError, RemoteCallError
from twinkle.infra.ray._lazy import LazyResult
from twinkle.infra.ray._proxy import RemoteProxy

__all__ = [
    "ClusterResourceError",
    "LazyResult",
    "RemoteCallError",
    "RemoteProxy",
    "collect_results",
    "dispatch_args",
    "get_device_placement",
    "get_global_device_mesh",
    "init_ray",
    "make_remote",
    "shutdown_ray",
]
