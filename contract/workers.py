from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

Isolation = Literal["bwrap", "container", "none"]
CanaryStateName = Literal["pending", "passed", "failed"]


class OfferedGroup(BaseModel):
    """One DeviceGroup a worker offers: a pool shared by count (``pooled``: several jobs side by side, each on
    its own devices) or a static slot that runs one job at a time (the default, and what an older worker
    means)."""

    name: str = Field(default="default", min_length=1, max_length=128)
    ranks: int = Field(ge=1, le=4096)
    device_type: str = Field(min_length=1, max_length=32)
    device_model: str | None = Field(default=None, max_length=128)
    memory_gb: float | None = Field(default=None, ge=0, le=1_048_576, allow_inf_nan=False)
    pooled: bool = Field(
        default=False,
        description="true: the group's devices are shared by count (a job takes as many as its groups need and "
        "jobs run side by side on disjoint devices); false: one slot, one job at a time on all of them",
    )


class DevicesInUse(BaseModel):
    """Devices of one offered group that one job holds (indexes 0..ranks-1 within the group)."""

    job_id: str | None = Field(description="the job holding them when it is the caller's; null for another user's")
    group: str
    devices: list[int]


class ProbedDevice(BaseModel):
    """One kind of device the worker's probe found: each CUDA device is its own entry; the CPU is one entry whose
    ``count`` is its usable cores."""

    device_type: str = Field(min_length=1, max_length=32, description="cuda, npu or cpu")
    device_model: str | None = Field(default=None, max_length=128)
    count: int = Field(default=1, ge=1, le=65_536, description="devices of this entry (CPU: usable cores)")
    memory_gb: float | None = Field(default=None, ge=0, le=1_048_576, allow_inf_nan=False)
    matmul_tflops: float | None = Field(
        default=None, ge=0, le=100_000, allow_inf_nan=False,
        description="a timed float32 matmul on this device (TFLOP/s); None when it could not run",
    )


class HardwareProbe(BaseModel):
    """What ``twinkle-worker`` measured at start (``worker/probe.py``). The API refuses offered groups beyond it;
    a donor can fake it, so spot-check replays (docs/architecture.md) are the defence that counts."""

    devices: list[ProbedDevice] = Field(min_length=1, max_length=1024)
    seconds: float = Field(default=0.0, ge=0, le=86_400, allow_inf_nan=False, description="how long it took")


class RegisterWorkerRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    hostname: str = Field(default="", max_length=255)
    device_groups: list[OfferedGroup] = Field(min_length=1, max_length=64)
    isolation: Isolation = Field(
        default="none",
        description="how the worker isolates each job: 'bwrap' (bubblewrap sandbox), 'container' (a container "
        "runtime such as gVisor or Kata does it), or 'none' (a trusted pool; jobs must opt in). A worker that sends "
        "nothing counts as 'none'.",
    )
    probe: HardwareProbe | None = Field(
        default=None,
        description="the hardware probe; required: offered groups must fit in it (ranks per device family, memory, "
        "model), and ranks per worker are capped by the platform",
    )


class RegisterWorkerResponse(BaseModel):
    """No broker or Redis credential: a worker speaks only HTTP(S) to the API and claims its assignments."""

    worker_id: str
    heartbeat_interval_s: float
    lease_s: float
    approved: bool = Field(
        default=True,
        description="false: the deployment requires an admin to approve this token's workers; until then the "
        "worker registers and heartbeats but is given no jobs ('awaiting approval' in GET /workers)",
    )
    claim_wait_s: float = Field(default=20.0, description="how long one claim waits for an assignment (long poll)")


class Assignment(BaseModel):
    """An attempt the dispatcher assigned to this worker: run it (``POST /attempts/{job_id}/{attempt}/start``
    first; a second start of it answers 409)."""

    job_id: str
    attempt: int = Field(ge=1)


class AttemptRef(BaseModel):
    job_id: str = Field(min_length=1, max_length=128)
    attempt: int = Field(ge=1, le=1_000_000)


class HeartbeatRequest(BaseModel):
    running: list[AttemptRef] = Field(default_factory=list, max_length=1024)


class HeartbeatResponse(BaseModel):
    cancel: list[AttemptRef]


class CanaryStatus(BaseModel):
    """A donor's known-answer check: a tiny training whose loss curve the platform computed itself, run before the
    worker gets any user's job."""

    state: CanaryStateName = Field(
        description="pending: its canary is queued or running and it gets no other job; passed; failed: it gets no "
        "jobs (see detail)",
    )
    detail: str = Field(default="", description="why, in words (e.g. which step's loss differed)")


class Worker(BaseModel):
    id: str
    name: str
    hostname: str
    owner: str | None
    state: str
    device_groups: list[OfferedGroup]
    isolation: Isolation = Field(description="bwrap, container or none, as the worker declared it")
    registered_at: dt.datetime
    last_heartbeat_at: dt.datetime
    running_jobs: int
    devices_in_use: list[DevicesInUse] = Field(default_factory=list, description="which job holds which devices")
    jobs_run: int
    gpu_hours: float = Field(description="device-hours of GPU slots credited after validation")
    pending_gpu_hours: float = Field(
        default=0.0, description="device-hours of attempts not validated yet (granted at the next passing spot check)"
    )
    probe: HardwareProbe | None = Field(default=None, description="what the worker's probe found at registration")
    reputation: float = Field(default=0.5, description="0..1; rises with validated attempts, falls on a mismatch")
    validated_attempts: int = 0
    trusted: bool = Field(default=False, description="a platform pool (admin-marked token): runs replays")
    approved: bool = Field(default=True, description="false: awaiting an admin's approval; given no jobs until then")
    status: str = Field(
        default="",
        description="what the state means for this worker in words, e.g. 'awaiting approval', 'superseded by "
        "worker X (a newer registration with the same token)', 'token revoked'",
    )
    superseded_by: str | None = Field(default=None, description="the worker id that took over this one's token")
    canary: CanaryStatus | None = Field(
        default=None, description="its known-answer canary; null: none was required (a trusted pool, or canaries off)"
    )


class WorkerList(BaseModel):
    items: list[Worker]
