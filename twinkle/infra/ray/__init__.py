"""Ray mode: the same components, placed on DeviceGroups as Ray actors.

``twinkle.initialize(mode='ray', groups=[...])`` calls :func:`init_ray`; a ``remote_class`` component built with
``remote_group=NAME`` on the driver becomes :func:`make_remote`'s :class:`RemoteProxy`. Ray itself is imported
only when one of these runs, so ``import twinkle`` works without Ray installed.
"""

from twinkle.infra.ray._cluster import get_device_placement, get_global_device_mesh, init_ray, shutdown_ray
from twinkle.infra.ray._dispatch import collect_results, dispatch_args
from twinkle.infra.ray._errors import ClusterResourceError, RemoteCallError
from twinkle.infra.ray._proxy import LazyResult, RemoteProxy, make_remote

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
