"""Device detection: what this machine can offer as a DeviceGroup.

CUDA devices are found through torch (count, model name, memory per device); without CUDA the worker offers the
CPU, with a rank count from the settings or 1. Every detected field can be overridden in the settings, which is
also how a pooled machine advertises a custom offer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # detection itself needs no settings machinery
    from worker.settings import WorkerSettings

__all__ = ["DeviceGroupOffer", "detect_devices", "offer_from_settings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceGroupOffer:
    """One DeviceGroup this worker registers (the body shape of ``POST /workers/register``)."""

    name: str
    ranks: int
    device_type: str
    device_model: str | None
    memory_gb: float | None
    pooled: bool = False  # shared by count: several jobs side by side on disjoint devices

    def as_dict(self) -> dict:
        return asdict(self)


def _cuda_offer() -> DeviceGroupOffer | None:
    try:
        import torch
    except ImportError:  # a CPU-only donor may run without torch; the job's own interpreter decides
        return None
    try:
        if not torch.cuda.is_available():
            return None
        count = torch.cuda.device_count()
        props = [torch.cuda.get_device_properties(i) for i in range(count)]
    except Exception as exc:  # noqa: BLE001 - a broken driver means "no usable GPU", not a crash
        log.warning("CUDA present but not usable (%s); offering the CPU", exc)
        return None
    if count == 0:
        return None
    # A group is homogeneous for the matcher: report the smallest memory so a job never lands where it cannot fit.
    memory_gb = round(min(p.total_memory for p in props) / 1024**3, 1)
    return DeviceGroupOffer(
        name="default", ranks=count, device_type="cuda", device_model=props[0].name, memory_gb=memory_gb
    )


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def _cpu_memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        return None


def detect_devices() -> DeviceGroupOffer:
    """What the hardware offers, before settings overrides."""
    return _cuda_offer() or _cpu_offer()


def _cpu_offer() -> DeviceGroupOffer:
    return DeviceGroupOffer(
        name="default", ranks=1, device_type="cpu", device_model=_cpu_model(), memory_gb=_cpu_memory_gb()
    )


def offer_from_settings(settings: WorkerSettings, detected: DeviceGroupOffer | None = None) -> DeviceGroupOffer:
    """Detected devices with the settings' overrides applied (``TWINKLE_WORKER_DEVICE_TYPE`` etc.)."""
    if detected is None and settings.device_type is not None and (settings.device_type != "cuda" or settings.ranks):
        # an offer the settings spell out needs no CUDA probe (importing torch takes seconds)
        detected = _cpu_offer()
    found = detected or detect_devices()
    overridden_type = settings.device_type is not None and settings.device_type != found.device_type
    return DeviceGroupOffer(
        name=found.name,
        pooled=settings.share_devices,
        ranks=settings.ranks or found.ranks,
        device_type=settings.device_type or found.device_type,
        # a different device type makes the detected model and memory meaningless
        device_model=settings.device_model or (None if overridden_type else found.device_model),
        memory_gb=settings.memory_gb or (None if overridden_type else found.memory_gb),
    )
