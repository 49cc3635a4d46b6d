"""The one interface every way of isolating an attempt implements (STYLE #17: the runner never knows which).

* ``Sandbox.launch(LaunchRequest) -> SandboxedProcess``: start ``argv`` with pipes on stdout/stderr.
* ``SandboxedProcess``: ``poll``/``wait``, ``signal_all`` (every process of the attempt, however it was
  started: setsid, double fork) and ``limit_reason`` (why a limit ended the attempt, ``None`` otherwise).

Errors:

* ``SandboxError``: the sandbox cannot run at all here (no bwrap, user namespaces off); the message says what to do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Literal

__all__ = ["Isolation", "LaunchRequest", "Limits", "Sandbox", "SandboxError", "SandboxedProcess", "format_bytes"]

Isolation = Literal["bwrap", "container", "none"]

GiB = 1024**3


class SandboxError(RuntimeError):
    """The chosen sandbox cannot run on this machine; the message says what to do next."""


def format_bytes(n: int) -> str:
    """``8 GiB``, ``512 MiB``: the unit a donor set the limit in."""
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Limits:
    """What one attempt may use. ``None``: no limit of that kind.

    Args:
        memory_bytes: resident memory of all the attempt's processes together (and its ``/dev/shm``).
        pids: processes (and threads, under cgroup v2) alive at once.
        cpus: CPU cores (cgroup ``cpu.max`` where delegated, else CPU affinity to the first ``cpus`` cores).
        disk_bytes: bytes under the attempt's folder (code, output, tmp).
    """

    memory_bytes: int | None = None
    pids: int | None = None
    cpus: float | None = None
    disk_bytes: int | None = None

    def describe(self) -> str:
        """``memory 4.8 GiB, disk 12.5 GiB, 2 CPUs, 4096 processes``: what the job's log tells its owner."""
        parts = []
        if self.memory_bytes is not None:
            parts.append(f"memory {format_bytes(self.memory_bytes)}")
        if self.disk_bytes is not None:
            parts.append(f"disk {format_bytes(self.disk_bytes)}")
        if self.cpus is not None:
            parts.append(f"{self.cpus:g} CPU{'' if self.cpus == 1 else 's'}")
        if self.pids is not None:
            parts.append(f"{self.pids} processes")
        return ", ".join(parts) or "none"

    def share(self, held: int, offered: int) -> Limits:
        """The part of the worker's limits an attempt holding ``held`` of its ``offered`` devices gets: memory,
        CPUs and disk in proportion, so jobs side by side on a pool cannot starve each other (Slurm's
        ``DefMemPerGPU`` idea); the process cap stays per attempt."""
        if offered <= 0 or held >= offered:
            return self
        part = max(held, 1) / offered
        return replace(
            self,
            memory_bytes=None if self.memory_bytes is None else int(self.memory_bytes * part),
            cpus=None if self.cpus is None else max(1.0, self.cpus * part),
            disk_bytes=None if self.disk_bytes is None else int(self.disk_bytes * part),
        )


@dataclass
class LaunchRequest:
    """What to run and what it may touch. Paths are the same inside the sandbox as outside.

    Args:
        argv: the command (``[python, entrypoint]``).
        python: the interpreter in ``argv``; a sandbox makes its environment (venv, base install) readable.
        cwd: its working folder (inside ``attempt_dir``).
        env: its whole environment (the runner's scrubbed job environment).
        attempt_dir: the one folder the job may write (code, output, tmp); its size counts against the disk limit.
        tmp_dir: mounted at ``/tmp`` too, so stray ``/tmp`` writes count against the disk limit.
        read_only: more folders the job may read (the Python environment, the assets cache).
        gpus: host indices of the GPUs given to the attempt (``/dev/nvidiaN``); empty for none.
        limits: what the attempt may use.
        label: ``job J attempt N``, for log lines.
    """

    argv: list[str]
    cwd: Path
    env: Mapping[str, str]
    attempt_dir: Path
    tmp_dir: Path | None = None
    read_only: list[Path] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    label: str = "attempt"
    python: str | None = None


class SandboxedProcess(ABC):
    """A started attempt. ``proc`` is the outermost process (its pipes carry the job's stdout and stderr)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._limit_reason: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stderr(self) -> IO[bytes]:
        assert self.proc.stderr is not None
        return self.proc.stderr

    @property
    def limit_reason(self) -> str | None:
        """``"memory limit 8 GiB reached"`` when a limit ended the attempt, else ``None``."""
        return self._limit_reason

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        return self.proc.wait()

    def returncode(self) -> int:
        """The job's exit status (negative: killed by that signal)."""
        return self.proc.wait()

    @abstractmethod
    def pids(self) -> list[int]:
        """The host pids of every live process of the attempt."""

    @abstractmethod
    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every process of the attempt; SIGKILL leaves nothing behind."""

    def end_for_limit(self, reason: str) -> None:
        """A limit was crossed: remember why (the first reason wins) and kill everything."""
        if self._limit_reason is None:
            self._limit_reason = reason
        self.signal_all(signal.SIGKILL)

    def close(self) -> None:  # noqa: B027 - optional: a sandbox with nothing to release keeps this one
        """Release what ``launch`` set up (watchers, cgroups); called once the attempt ended."""


class Sandbox(ABC):
    """How attempts are isolated on this worker; ``isolation`` is sent to the API at registration."""

    isolation: Isolation

    @abstractmethod
    def launch(self, request: LaunchRequest) -> SandboxedProcess:
        """Start ``request.argv``; raises ``SandboxError`` (with what to do) when it cannot."""

    def describe(self) -> dict:
        """What ``twinkle-worker doctor`` prints about this sandbox."""
        return {"isolation": self.isolation}


def popen(argv: list[str], request: LaunchRequest, env: Mapping[str, str], preexec=None) -> subprocess.Popen:
    """The one ``Popen`` every sandbox uses: pipes, no stdin, a session of its own, no inherited fds."""
    return subprocess.Popen(
        argv,
        cwd=request.cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=preexec,
        close_fds=True,
    )


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
