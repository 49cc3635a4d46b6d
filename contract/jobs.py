from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

# The limits of a job's resource request. The explicit ``request`` field and the static script reader both
# validate through ``JobRequest``, so a script can never store what the request field would refuse.
MAX_GROUP_NAME = 128
MAX_RANKS = 4096
MAX_DEVICE_TYPE = 32
MAX_GROUPS = 64
MAX_MEMORY_GB = 1_048_576.0  # 1 PiB per rank: far above any device, finite so a job can be matched at all


Launcher = Literal["python", "torchrun", "ray"]
LAUNCHERS: tuple[str, ...] = ("python", "torchrun", "ray")
LAUNCHER_DOC = (
    "how the worker starts the entrypoint: 'python' (one process), 'torchrun' (local mode, one process per rank: "
    "python -m torch.distributed.run --standalone --nproc_per_node <the attempt's device count>), 'ray' (Ray mode: "
    "a Ray cluster of the attempt's own, limited to its devices, RAY_ADDRESS set for the script). Unset: read "
    "from the script (twinkle.initialize(mode=...) and its DeviceGroups)"
)


TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
"""Job states that never change again; a client following a job stops at one of these. ``validating`` (the
attempt reported success and is being replayed on a trusted worker) is not one: it ends ``succeeded``, or the
job is queued again when the replay disagrees."""


class DeviceGroupRequest(BaseModel):
    """One DeviceGroup a job needs. ``device_type``: cuda/GPU, cpu/CPU, npu, or ``any``."""

    name: str = Field(default="default", min_length=1, max_length=MAX_GROUP_NAME)
    ranks: int = Field(default=1, ge=1, le=MAX_RANKS)
    device_type: str = Field(default="any", min_length=1, max_length=MAX_DEVICE_TYPE)
    min_memory_gb: float = Field(default=0.0, ge=0, le=MAX_MEMORY_GB, allow_inf_nan=False)


class JobRequest(BaseModel):
    device_groups: list[DeviceGroupRequest] = Field(min_length=1, max_length=MAX_GROUPS)
    allow_unsandboxed: bool = Field(
        default=False,
        description="the owner accepts a worker without a sandbox (isolation 'none', a trusted pool); by default "
        "a job runs only on workers that isolate it (bwrap or a container runtime)",
    )
    launcher: Launcher | None = Field(default=None, description=LAUNCHER_DOC)


class StoredDeviceGroup(BaseModel):
    """A DeviceGroup as stored; read without the submit limits, so an old or odd row never fails a listing."""

    name: str
    ranks: int
    device_type: str
    min_memory_gb: float


class StoredRequest(BaseModel):
    device_groups: list[StoredDeviceGroup]
    allow_unsandboxed: bool = False
    launcher: str = Field(default="python", description=LAUNCHER_DOC)


class InspectResponse(BaseModel):
    request: JobRequest
    warnings: list[str]
    entrypoint: str


class Attempt(BaseModel):
    n: int
    worker_id: str | None
    state: str
    assigned_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    exit_code: int | None
    error: str | None
    validation: str | None = Field(
        default=None,
        description="spot check of a succeeded attempt: pending (being replayed), validated, unverified (the replay "
        "disagreed: the job was queued again), inconclusive (nothing to compare); none: not sampled",
    )


class Job(BaseModel):
    id: str
    name: str
    user_id: str
    state: str = Field(
        description="queued, assigned, running, cancelling, validating (success reported, replay pending), "
        "succeeded, failed or cancelled"
    )
    entrypoint: str
    request: StoredRequest
    warnings: list[str]
    bundle_size: int
    attempt: int = Field(description="number of the live (or last) attempt; 0 before the first")
    worker_id: str | None
    queue_position: int | None = Field(
        description="estimated 1-based place in the dispatch order while queued (users take turns, each user first in,"
        " first out; the dispatcher also weighs fair share, held jobs and free slot shapes)"
    )
    pending_reason: str | None = Field(description="why a queued job is waiting")
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    attempts: list[Attempt]


class JobList(BaseModel):
    items: list[Job]
    total: int


class MetricRecord(BaseModel):
    attempt: int
    step: int
    ts: float
    metrics: dict[str, Any]


class MetricsResponse(BaseModel):
    records: list[MetricRecord]


class Artifact(BaseModel):
    attempt: int
    path: str
    size: int
    url: str = Field(description="presigned, short-lived download link")


class ArtifactList(BaseModel):
    items: list[Artifact]
