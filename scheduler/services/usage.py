"""What a worker is credited with: device-seconds of the GPU slots its attempts held.

Its own module because both the requeue path and the finish path credit workers, and the worker service
(registration, heartbeats) depends on requeueing.
"""

from __future__ import annotations

import datetime as dt

from scheduler.db import AttemptModel, JobModel, WorkerModel


def gpu_seconds_of(attempt: AttemptModel, job: JobModel, worker: WorkerModel | None, end: dt.datetime) -> float:
    """Device-seconds of GPU slots an attempt held (CPU slots do not count as GPU-hours)."""
    if attempt.started_at is None or worker is None or not job.slots:
        return 0.0
    ranks = 0
    for idx in job.slots:
        if 0 <= idx < len(worker.device_groups):
            g = worker.device_groups[idx]
            if str(g.get("device_type", "")).lower() in ("cuda", "gpu", "npu"):
                ranks += int(g.get("ranks", 0))
    return max(0.0, (end - attempt.started_at).total_seconds()) * ranks
