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

__version__ = "0.1.0"

__all__ = [
    "DeviceGroup",
    "DeviceMesh",
    "Platform",
    "get_device_placement",
    "init_tinker_client",
    "init_twinkle_client",
    "initialize",
    "is_master",
    "remote_class",
    "remote_function",
]


def init_twinkle_client(base_url: str | None = None, api_key: str | None = None, session_heartbeat_interval: int = 10):
    """Connect to a twinkle HTTP training server. Not available in Twinkle Commons yet."""
    raise NotImplementedError(
        "twinkle's HTTP client mode (init_twinkle_client) is not implemented in Twinkle Commons; run the script "
        "locally (python / torchrun), in Ray mode, or submit it to the platform with twinkle-submit"
    )


def init_tinker_client(*args, **kwargs):
    """Patch the ``tinker`` SDK to talk to a twinkle server. Not available in Twinkle Commons yet."""
    raise NotImplementedError(
        "init_tinker_client (the Tinker SDK bridge) is not implemented in Twinkle Commons; use the twinkle API "
        "directly, locally or in Ray mode"
    )
