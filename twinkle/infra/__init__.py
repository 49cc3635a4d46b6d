"""Modes, device groups and meshes, and the decorators that make a component placeable (local or Ray)."""

from twinkle.infra._initialize import initialize, seed_everything
from twinkle.infra._remote import get_device_placement, is_master, remote_class, remote_function
from twinkle.infra._state import get_global_mesh, get_groups, get_mode
from twinkle.utils.device_mesh import DeviceGroup, DeviceMesh
from twinkle.utils.platform import Platform

__all__ = [
    "DeviceGroup",
    "DeviceMesh",
    "Platform",
    "get_device_placement",
    "get_global_mesh",
    "get_groups",
    "get_mode",
    "initialize",
    "is_master",
    "remote_class",
    "remote_function",
    "seed_everything",
]
