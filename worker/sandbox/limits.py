"""Enforcing ``Limits``: cgroup v2 where this process owns a delegated cgroup, rlimits and a watcher elsewhere.

* ``CgroupV2``: the kernel counts and stops (``memory.max``, ``pids.max``, ``cpu.max``); the watcher only reads
  ``memory.events``/``pids.events`` to name the limit that ended the attempt.
* Without it: ``RLIMIT_FSIZE`` (no single file past the disk limit) and ``RLIMIT_CORE`` in the child, CPU affinity
  for the CPU limit, and ``LimitWatcher`` polling the attempt's processes (pids, proportional set size) a few
  times a second. A fast burst can overshoot for one poll interval before the attempt is killed.
* Always: the watcher sums the attempt folder's allocated blocks once a second (disk).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import resource
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from worker.sandbox.base import Limits, SandboxedProcess, format_bytes

__all__ = [
    "CgroupV2",
    "LimitWatcher",
    "child_setup",
    "cpu_affinity_prefix",
    "folder_usage",
    "process_memory",
    "process_rss",
]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def folder_usage(root: Path) -> int:
    """Bytes allocated under ``root`` (blocks, so sparse files count what they use); links are not followed."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):  # removed while we walked
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def process_rss(pid: int) -> int:
    """Resident set size of ``pid``: cheap (kernel counters), but counts pages shared with others in full."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def process_memory(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages split between the processes sharing them), else its RSS.

    Dearer than RSS (the kernel walks the page tables), so the watcher asks only once the RSS sum is too high."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return process_rss(pid)


try:  # loaded here, not in the child: dlopen after fork in a threaded process can deadlock
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


def child_setup(limits: Limits) -> Callable[[], None]:
    """What the child does to itself before exec: die with the daemon (``PR_SET_PDEATHSIG``, so a SIGKILLed
    daemon leaves no job running unreported), no core dumps, no single file past the disk limit."""
    fsize = limits.disk_bytes

    def apply() -> None:  # pragma: no cover - runs in the forked child
        if _LIBC is not None:
            _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return apply


def cpu_affinity_prefix(cpus: float | None) -> list[str]:
    """``taskset -c 0-3`` for a CPU limit without cgroups: the job's threads share that many cores."""
    if cpus is None:
        return []
    allowed = sorted(os.sched_getaffinity(0))
    take = max(1, math.ceil(cpus))
    if take >= len(allowed):
        return []
    return ["taskset", "-c", ",".join(str(c) for c in allowed[:take])]


class CgroupV2:
    """A cgroup v2 subtree this process may write (``systemd-run --user --scope``, a container's own cgroup).

    ``find()`` returns one or ``None`` (with ``why_not``); each attempt gets a child cgroup with the limits.
    """

    why_not: str = ""

    def __init__(self, base: Path):
        self.base = base

    @classmethod
    def find(cls, root: Path = CGROUP_ROOT) -> CgroupV2 | None:
        if not (root / "cgroup.controllers").is_file():
            cls.why_not = f"{root} is not a cgroup v2 hierarchy (cgroup v1 or hybrid)"
            return None
        try:
            line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
        except (OSError, StopIteration):
            cls.why_not = "this process has no cgroup v2 path"
            return None
        base = root / line[3:].lstrip("/")
        listed = base / "cgroup.controllers"
        controllers = set(listed.read_text().split()) if listed.is_file() else set()
        if not {"memory", "pids"} <= controllers:
            cls.why_not = f"the memory and pids controllers are not delegated to {base} (have: {sorted(controllers)})"
            return None
        if not os.access(base, os.W_OK) or not os.access(base / "cgroup.subtree_control", os.W_OK):
            cls.why_not = (
                f"{base} is not writable by this user; run the worker under "
                "`systemd-run --user --scope -p Delegate=yes`"
            )
            return None
        group = cls(base)
        try:
            group._take_leaf()
        except OSError as exc:
            cls.why_not = f"could not set up {base}: {exc}"
            return None
        return group

    def _take_leaf(self) -> None:
        # cgroup v2 puts processes only in leaves: move this daemon into a leaf of its own, then let children
        # of the base get the controllers
        leaf = self.base / "twinkle-worker"
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
        wanted = [c for c in ("memory", "pids", "cpu") if c in (self.base / "cgroup.controllers").read_text().split()]
        (self.base / "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))

    def create(self, limits: Limits) -> Path:
        """A fresh child cgroup with ``limits`` written; ``enter_argv`` puts the command into it before exec."""
        path = self.base / f"attempt-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        if limits.memory_bytes is not None:
            (path / "memory.max").write_text(str(limits.memory_bytes))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
        if limits.pids is not None:
            (path / "pids.max").write_text(str(limits.pids))
        if limits.cpus is not None and (path / "cpu.max").exists():
            (path / "cpu.max").write_text(f"{int(limits.cpus * 100000)} 100000")
        return path

    @staticmethod
    def enter_argv(path: Path, argv: list[str]) -> list[str]:
        # the shell writes its own pid and then becomes the command: nothing runs outside the cgroup
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(path / "cgroup.procs"), *argv]

    @staticmethod
    def events(path: Path, name: str) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in (line.split() for line in (path / name).read_text().splitlines())}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def pids(path: Path) -> list[int]:
        try:
            return [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    @staticmethod
    def remove(path: Path) -> None:
        try:
            if (path / "cgroup.kill").exists():
                (path / "cgroup.kill").write_text("1")
            path.rmdir()
        except OSError as exc:  # still emptying; the next daemon start finds nothing in it either way
            log.debug("could not remove %s: %s", path, exc)


class LimitWatcher:
    """Polls an attempt and ends it (``SandboxedProcess.end_for_limit``) when it crosses one of ``limits``."""

    def __init__(
        self,
        process: SandboxedProcess,
        limits: Limits,
        attempt_dir: Path,
        *,
        cgroup: Path | None = None,
        interval_s: float = 0.2,
        disk_interval_s: float = 1.0,
    ):
        self.process, self.limits, self.attempt_dir, self.cgroup = process, limits, attempt_dir, cgroup
        self.interval_s, self.disk_interval_s = interval_s, disk_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sandbox-limits")
        self.peak_memory = 0
        self.peak_pids = 0

    def start(self) -> LimitWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, then look once more (a job killed by SIGXFSZ at the disk limit ends before a poll)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self.check_disk()
        self.check_cgroup()

    def _loop(self) -> None:
        next_disk = 0.0
        while not self._stop.wait(self.interval_s):
            try:
                if self.cgroup is not None:
                    self.check_cgroup()
                else:
                    self.check_processes()
                now = time.monotonic()
                if now >= next_disk:
                    self.check_disk()
                    next_disk = now + self.disk_interval_s
            except Exception:  # a watcher bug must not leave the job unwatched silently
                log.exception("limit watcher of %s failed", self.attempt_dir)

    def _end(self, reason: str) -> None:
        if self.process.limit_reason is None:
            log.warning("%s: %s; ending the attempt", self.attempt_dir, reason)
        self.process.end_for_limit(reason)

    def check_processes(self) -> None:
        pids = self.process.pids()
        self.peak_pids = max(self.peak_pids, len(pids))
        if self.limits.pids is not None and len(pids) > self.limits.pids:
            self._end(f"pids limit {self.limits.pids} reached (the job started {len(pids)} processes)")
            return
        if self.limits.memory_bytes is not None:
            used = sum(process_rss(p) for p in pids)
            if used > self.limits.memory_bytes:  # RSS >= PSS: only now is the exact (and dearer) figure needed
                used = sum(process_memory(p) for p in pids)
            self.peak_memory = max(self.peak_memory, used)
            if used > self.limits.memory_bytes:
                self._end(f"memory limit {format_bytes(self.limits.memory_bytes)} reached")

    def check_cgroup(self) -> None:
        if self.cgroup is None:
            return
        if CgroupV2.events(self.cgroup, "memory.events").get("oom_kill", 0) > 0 and self.limits.memory_bytes:
            self._end(f"memory limit {format_bytes(self.limits.memory_bytes)} reached")
        elif CgroupV2.events(self.cgroup, "pids.events").get("max", 0) > 0 and self.limits.pids:
            self._end(f"pids limit {self.limits.pids} reached (a fork was refused)")

    def check_disk(self) -> None:
        if self.limits.disk_bytes is None:
            return
        used = folder_usage(self.attempt_dir)
        if used >= self.limits.disk_bytes:
            limit, held = format_bytes(self.limits.disk_bytes), format_bytes(used)
            self._end(f"disk limit {limit} reached (the attempt folder holds {held})")
