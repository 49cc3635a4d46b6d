"""What the job costs the machine: CPU and memory of its process tree (psutil), and its GPUs (NVML).

The runner samples every few seconds and posts the samples as metrics under ``sys/`` (``contract.jobs.
SYS_METRIC_PREFIX``), so the job page charts them beside the training curves:

- ``sys/cpu_percent``: CPU use of every process of the attempt, summed (100 = one core busy)
- ``sys/rss_bytes``: resident memory of those processes, summed
- ``sys/gpu{i}/util_percent``, ``sys/gpu{i}/memory_bytes``: each GPU given to the job (``i`` as the job sees it,
  from 0), read through NVML (``nvidia-ml-py``); left out without a GPU or without NVML.

The tree is the sandbox's leader (bwrap, or the job itself) and its descendants, as the worker sees them.
"""

from __future__ import annotations

import logging
from typing import Any

import psutil

__all__ = ["GpuSampler", "ProcessTreeSampler"]

log = logging.getLogger(__name__)


class ProcessTreeSampler:
    """CPU% and RSS of a process and its descendants. ``cpu_percent`` is measured between two calls, so the
    first sample of a process counts 0 for it; processes are kept between calls for that reason."""

    def __init__(self, pid: int):
        self.pid = pid
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        alive = {}
        for p in procs:
            alive[p.pid] = self._procs.get(p.pid, p)  # the same object keeps its CPU time baseline
        self._procs = alive
        return list(alive.values())

    def sample(self) -> dict[str, float]:
        cpu = rss = 0.0
        read = 0
        for p in self._tree():
            try:
                with p.oneshot():
                    if p.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped: it reads as 0 bytes
                        continue
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
                read += 1
            except psutil.Error:  # exited between the listing and the read
                continue
        if not read:  # the tree ended (or was never seen): no sample rather than a false zero
            return {}
        return {"sys/cpu_percent": round(cpu, 1), "sys/rss_bytes": rss, "sys/processes": float(read)}


class GpuSampler:
    """Utilisation and memory of the GPUs given to the job (host indices), through NVML; empty without either."""

    def __init__(self, host_indices: list[int]):
        self._handles: list[Any] = []
        self._nvml: Any = None
        if not host_indices:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in host_indices]
            self._nvml = pynvml
        except Exception as exc:  # noqa: BLE001 - no NVML (no driver, no package): GPU samples are left out
            log.info("no GPU samples: NVML unavailable (%s)", exc)
            self._handles = []

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, handle in enumerate(self._handles):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # noqa: BLE001 - a GPU that stops answering is skipped, not fatal
                continue
            out[f"sys/gpu{i}/util_percent"] = float(util.gpu)
            out[f"sys/gpu{i}/memory_bytes"] = float(mem.used)
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed", exc_info=True)
            self._nvml = None
