"""File locks between processes: ``PosixFileLock`` and ``processing_lock(name)`` (``./.locks/<name>.lock``).

``processing_lock``: the first process runs the body while the others wait; then they run it too (typically
finding the work done, e.g. a cache the first one filled). Importing this module creates ``./.locks`` (upstream).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PosixFileLock", "processing_lock"]

_LOCK_DIR = Path(".locks")
_LOCK_DIR.mkdir(exist_ok=True)


class PosixFileLock:
    """An exclusive ``fcntl`` lock on a file; a context manager. Pickles as its path (fork- and spawn-safe)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PosixFileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path, self._fd = state["path"], None


@contextlib.contextmanager
def processing_lock(name: str) -> Iterator[None]:
    lock = PosixFileLock(_LOCK_DIR / f"{name}.lock")
    with lock:
        yield
    lock.close()
