"""Switches the platform sets in a job's environment, read by twinkle (docs/architecture.md, "The job's environment").

- ``TWINKLE_DETERMINISTIC=1``: ``twinkle.initialize`` forces deterministic kernels (``full_determinism=True``,
  whatever the script passed), so a replay on another machine reproduces the same per-step loss and grad norm
  (exactly on the CPU; within a tolerance on GPUs).
- ``TWINKLE_STOP_AFTER_STEPS=k``: the first training metric record at optimizer step ``k`` or later
  (``TransformersModel.calculate_metric``) is written, then the process exits with status 0: a spot-check replay
  runs the job's first k steps only. Local mode (python or torchrun: every rank stops at the same step); in Ray
  mode the switch is ignored, since the record is written inside an actor.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["DETERMINISTIC_ENV", "STOP_AFTER_STEPS_ENV", "deterministic_requested", "stop_after_steps",
           "stop_if_reached"]

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
    if ray is not None and ray.is_initialized():  # a Ray driver or actor: exiting here would kill an actor
        return
    print(f"twinkle: stopping after optimizer step {step} ({STOP_AFTER_STEPS_ENV}={k})", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)
