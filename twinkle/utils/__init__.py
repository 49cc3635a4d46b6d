"""Small helpers shared by every twinkle component: the mesh, the platform, logging, lookup by name."""

from twinkle.utils.construct import construct_class
from twinkle.utils.device_mesh import DeviceGroup, DeviceMesh
from twinkle.utils.logger import get_logger
from twinkle.utils.platform import Platform

__all__ = ["DeviceGroup", "DeviceMesh", "Platform", "construct_class", "get_logger"]
