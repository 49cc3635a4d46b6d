"""Switches the platform sets in a job's environment, read by twinkle (docs/architecture.md, "The job's environment").

- ``TWINKLE_DETERMINISTIC=1``: ``twinkle.initialize`` forces deterministic kernels (``full_determinism=True``,
  whatever the script passed), so a replay on another machine reproduces the same per-step loss and grad norm
  (exactly on the CPU; within a tolerance on GPUs).
- ``TWINKLE_STOP_AFTER_STEPS=k``: the first training metric record at optimizer step ``k`` or later
  (``TransformersModel.calculate_metric``) is written, then the process exits with status 0: a spot-check replay
  runs the job's first k steps only. Local mode (python or torchrun): every rank stops at the same step. Ray mode:
  the record is written inside an actor, which must not exit (that would kill it, not the job), so it leaves a
  marker beside the metrics file (``<TWINKLE_METRICS_FILE>.stop``) and the driver exits with status 0 at its next
  remote call (``stop_driver_if_asked``). The attempt's own Ray cluster goes with the attempt.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["DETERMINISTIC_ENV", "STOP_AFTER_STEPS_ENV", "deterministic_requested", "stop_after_steps",
           "stop_driver_if_asked", "stop_if_reached"]

logger = logging.getLogger(__name__)

DETERMINISTIC_ENV = "TWINKLE_DETERMINISTIC"
STOP_AFTER_STEPS_ENV = "TWINKLE_STOP_AFTER_STEPS"


def deterministic_requested() -> bool:
    return os.environ.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def stop_after_steps() -> int | None:
    """``k`` from ``TWINKLE_STOP_AFTER_STEPS`` (a positive integer), else ``None``."""
    raw = os.environ.get(STOP_AFTER_STEPS_ENV, "").strip()
    if not raw:
        return None
    try:
        k = int(raw)
    except ValueError:
        logger.warning("%s=%r is not an integer; ignored", STOP_AFTER_STEPS_ENV, raw)
        return None
    return k if k > 0 else None


def stop_if_reached(step: int) -> None:
    """Exit the process (status 0) once ``step`` reached ``TWINKLE_STOP_AFTER_STEPS``.

    ``os._exit``, not ``SystemExit``: a script's own ``except BaseException`` or ``finally`` could otherwise keep
    training past the steps the platform asked for, and a replay must stop where it was told."""
    k = stop_after_steps()
    if k is None or step < k:
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # a Ray actor: exiting here would kill the actor, not the job
        marker = _stop_marker()
        if marker is not None:
            marker.touch()
        return
    _exit_now(f"stopping after optimizer step {step} ({STOP_AFTER_STEPS_ENV}={k})")


def stop_driver_if_asked() -> None:
    """In a Ray driver, before each remote call: exit (status 0) once an actor reached ``TWINKLE_STOP_AFTER_STEPS``
    (its marker exists). A file check per call, and only while the switch is set."""
    if stop_after_steps() is None:
        return
    marker = _stop_marker()
    if marker is not None and marker.exists():
        _exit_now(f"stopping: an actor reached {STOP_AFTER_STEPS_ENV}={stop_after_steps()}")


def _stop_marker() -> Path | None:
    sink = os.environ.get("TWINKLE_METRICS_FILE")
    return Path(sink + ".stop") if sink else None


def _exit_now(why: str) -> None:
    print(f"twinkle: {why}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)
