from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

Isolation = Literal["bwrap", "container", "none"]


class OfferedGroup(BaseModel):
    """One DeviceGroup a worker offers; it runs one job at a time."""

    name: str = Field(default="default", min_length=1, max_length=128)
    ranks: int = Field(ge=1, le=4096)
    device_type: str = Field(min_length=1, max_length=32)
    device_model: str | None = Field(default=None, max_length=128)
    memory_gb: float | None = Field(default=None, ge=0)


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


class RegisterWorkerResponse(BaseModel):
    worker_id: str
    queue: str
    broker_url: str
    heartbeat_interval_s: float
    lease_s: float


class AttemptRef(BaseModel):
    job_id: str
    attempt: int


class HeartbeatRequest(BaseModel):
    running: list[AttemptRef] = Field(default_factory=list)


class HeartbeatResponse(BaseModel):
    cancel: list[AttemptRef]


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
    jobs_run: int
    gpu_hours: float


class WorkerList(BaseModel):
    items: list[Worker]
