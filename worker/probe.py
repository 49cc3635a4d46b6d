"""The hardware probe sent at registration: what this machine really has, measured, not configured.

Per CUDA device (through torch, when it is installed and sees one): its model, memory and a timed float32 matmul.
Always one CPU entry: usable cores (the affinity mask), the model name, the machine's memory and a timed matmul
(torch if present, else none). The API refuses offered groups beyond it (``scheduler/services/hardware.py``).

``TWINKLE_WORKER_PROBE_FILE`` (a JSON ``HardwareProbe``) replaces the measurement, for hardware torch cannot see
and for tests that stand in for a GPU. It weakens nothing: a donor can send any probe it likes, which is why the
platform also replays donors' work.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["run_probe"]

log = logging.getLogger(__name__)

MATMUL_N = 512


def _timed_matmul(torch: Any, device: str) -> float | None:
    """TFLOP/s of a few ``MATMUL_N`` float32 matmuls on ``device`` (after one warm-up)."""
    try:
        a = torch.randn(MATMUL_N, MATMUL_N, device=device)
        b = torch.randn(MATMUL_N, MATMUL_N, device=device)
        (a @ b).sum().item()  # warm-up, and a sync
        reps = 4
        t0 = time.perf_counter()
        for _ in range(reps):
            c = a @ b
        c.sum().item()
        seconds = max(time.perf_counter() - t0, 1e-9)
        return round(2 * MATMUL_N**3 * reps / seconds / 1e12, 4)
    except Exception as exc:  # noqa: BLE001 - a device that cannot multiply reports no speed, it does not crash
        log.warning("timed matmul on %s failed: %s", device, exc)
        return None


def _cpu_entry(torch: Any | None) -> dict[str, Any]:
    from worker.devices import _cpu_memory_gb, _cpu_model

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return {
        "device_type": "cpu", "device_model": _cpu_model(), "count": max(cores, 1), "memory_gb": _cpu_memory_gb(),
        "matmul_tflops": _timed_matmul(torch, "cpu") if torch is not None else None,
    }


def _cuda_entries(torch: Any) -> list[dict[str, Any]]:
    try:
        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append({
                "device_type": "cuda", "device_model": p.name, "count": 1,
                "memory_gb": round(p.total_memory / 1024**3, 1), "matmul_tflops": _timed_matmul(torch, f"cuda:{i}"),
            })
        return out
    except Exception as exc:  # noqa: BLE001 - a broken driver means "no usable GPU"
        log.warning("CUDA present but not usable (%s); probing the CPU only", exc)
        return []


def run_probe(probe_file: Path | None = None, *, with_cuda: bool = True) -> dict[str, Any]:
    """The ``HardwareProbe`` body (``contract.workers``). ``with_cuda`` False skips importing CUDA (a worker that
    offers only its CPU)."""
    if probe_file is not None:
        return json.loads(Path(probe_file).read_text())
    t0 = time.perf_counter()
    torch: Any
    try:
        import torch
    except ImportError:  # a CPU-only donor may run without torch
        torch = None
    devices = _cuda_entries(torch) if (torch is not None and with_cuda) else []
    devices.append(_cpu_entry(torch))
    return {"devices": devices, "seconds": round(time.perf_counter() - t0, 3)}
