"""Write a checkpoint folder atomically: fill a hidden temp folder beside it, then rename it into place.

A watcher (the platform's worker uploads every folder that appears under ``TWINKLE_OUTPUT_DIR``) therefore never
sees a half-written checkpoint: the final name appears only once every file is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from twinkle.errors import CheckpointError

__all__ = ["atomic_dir", "default_output_dir"]


def default_output_dir() -> str:
    """``$TWINKLE_OUTPUT_DIR`` when set (the platform sets it), else ``output``."""
    return os.environ.get("TWINKLE_OUTPUT_DIR") or "output"


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces ``target`` (an older folder of that name is removed).

    Raises:
        CheckpointError: the parent folder cannot be created or written.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise CheckpointError(
            f"cannot write a checkpoint into {str(target.parent)!r} ({exc.strerror or exc}); pass a writable "
            f"output_dir= to save(), or set TWINKLE_OUTPUT_DIR to a writable folder"
        ) from exc
    try:
        yield staging
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
