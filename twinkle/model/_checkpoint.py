"""Checkpoint folders: written atomically, read back without running anyone's code.

Writing: fill a hidden temp folder beside the target, then rename it into place. A watcher (the platform's worker
uploads every folder that appears under ``TWINKLE_OUTPUT_DIR``) therefore never sees a half-written checkpoint.

Reading: a checkpoint may come from a stranger (on the platform, a donor's machine wrote it), and a pickle runs
code when it is loaded. So weights are safetensors, and every ``.pt`` state file (optimizer, LR scheduler, grad
scaler, RNG) is read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists, tuples and dicts
only. A file that needs anything else is refused with ``CheckpointError`` before any of it runs.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinkle.errors import CheckpointError

TRAINER_STATE = "trainer_state.json"
"""The step counters of a checkpoint saved with ``save_optimizer=True`` (JSON)."""

__all__ = ["atomic_dir", "default_output_dir", "get_rng_state", "load_state_file", "set_rng_state"]


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


def load_state_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that needs real unpickling is refused.

    Raises:
        CheckpointError: the file holds objects other than tensors and plain containers (a pickle payload, or a
            checkpoint written by code that stored arbitrary objects), or cannot be read at all.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line for line in str(exc).splitlines() if "GLOBAL" in line or "global" in line]
        if not lines:  # not a forbidden object: a damaged file
            raise CheckpointError(f"cannot read {str(path)!r} ({exc}); is the checkpoint complete?") from None
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors, numbers, strings and containers, "
            f"and loading it would run code from whoever wrote it ({lines[0].strip()[:200]}). Re-save the "
            f"checkpoint with this version of twinkle, or load it yourself only if you trust its source"
        ) from None
    except Exception as exc:  # torch reports a damaged file as RuntimeError, KeyError, EOFError, ...
        raise CheckpointError(
            f"cannot read {str(path)!r} ({type(exc).__name__}: {exc}); is the checkpoint complete?"
        ) from exc


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values, loadable with weights_only."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [int(version), torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(rng: Any, source: str = "rng_state.pt") -> None:
    """Restore what ``get_rng_state`` returned.

    Raises:
        CheckpointError: the state is not in that shape.
    """
    try:
        version, internal, gauss = rng["python"]
        random.setstate((int(version), tuple(int(x) for x in internal.tolist()), gauss))
        npr = rng["numpy"]
        np.random.set_state((npr["kind"], npr["keys"].numpy().astype(np.uint32), int(npr["pos"]),
                             int(npr["has_gauss"]), float(npr["cached_gaussian"])))
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{source}: not an RNG state written by save(..., save_optimizer=True) ({exc})") from exc
