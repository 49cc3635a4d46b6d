"""twinkle: a component library for training large language models, the same script under python, torchrun and Ray.

>>> import twinkle
>>> twinkle.initialize(mode='local')

Components live in subpackages (``twinkle.dataset``, ``twinkle.template``, ``twinkle.model``, ...); the top level
holds the run-mode and device-layout API. Exceptions are in ``twinkle.errors``.
"""

from __future__ import annotations

from twinkle.infra import (
    DeviceGroup,
    DeviceMesh,
    Platform,
    get_device_placement,
    initialize,
    is_master,
    remote_class,
    remote_function,
)
from twinkle.version import __release_datetime__ as __release_datetime__
from twinkle.version import __version__ as __version__

__all__ = [
    "GPU",
    "NPU",
    "DeviceGroup",
    "DeviceMesh",
    "Platform",
    "Plugin",
    "check_unsafe",
    "exists",
    "find_free_port",
    "find_node_ip",
    "framework_util",
    "get_device_placement",
    "get_logger",
    "init_tinker_client",
    "init_twinkle_client",
    "initialize",
    "is_master",
    "remote_class",
    "remote_function",
    "requires",
    "torch_util",
    "trust_remote_code",
]

# upstream's extra top-level names, imported on first use (the top level stays light, as upstream's lazy module)
_LAZY = {
    "get_logger": "twinkle.utils.logger",
    "GPU": "twinkle.utils.platform",
    "NPU": "twinkle.utils.platform",
    "Plugin": "twinkle.utils.plugin",
    "check_unsafe": "twinkle.utils.misc",
    "exists": "twinkle.utils.misc",
    "find_free_port": "twinkle.utils.misc",
    "find_node_ip": "twinkle.utils.misc",
    "requires": "twinkle.utils.misc",
    "trust_remote_code": "twinkle.utils.misc",
    "framework_util": "twinkle.utils",
    "torch_util": "twinkle.utils",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'twinkle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def init_twinkle_client(base_url: str | None = None, api_key: str | None = None, session_heartbeat_interval: int = 10,
                        **kwargs):
    """Connect to a ``twinkle-server`` (HTTP mode); the same as ``twinkle_client.init_twinkle_client``."""
    from twinkle_client import init_twinkle_client as _init

    return _init(base_url, api_key, session_heartbeat_interval=session_heartbeat_interval, **kwargs)


def init_tinker_client(base_url: str | None = None, api_key: str | None = None, **kwargs):
    """A stock ``tinker`` SDK ``ServiceClient`` for a ``twinkle-server``; see ``twinkle_client.tinker``."""
    from twinkle_client.tinker import init_tinker_client as _init

    return _init(base_url, api_key, **kwargs)
