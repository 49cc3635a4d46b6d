from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

CHECKPOINT_MARKER = ".twinkle-complete.json"
"""Uploaded by the worker as ``output/<folder>/.twinkle-complete.json`` after every file of a checkpoint folder, with
``{"files": {"<path in the folder>": size}}``. Only a folder whose marker is recorded, and whose every listed file
is recorded with that size, is a resume point: a folder cut short (the attempt died mid-upload, a rank died
mid-save) never is."""


class ResumeFile(BaseModel):
    path: str
    size: int
    url: str


class ResumeFrom(BaseModel):
    """The checkpoint to resume from: the folder the platform recorded last for the latest earlier attempt that
    uploaded one (never chosen by its name), and its files."""

    attempt: int
    checkpoint: str = Field(description="the folder, 'output/<name>'; TWINKLE_RESUME_FROM points at its copy")
    files: list[ResumeFile]


class AttemptDevices(BaseModel):
    """Devices of one offered group given to the attempt: indexes within the group (``0..ranks-1``), which for
    CUDA are the worker's ``CUDA_VISIBLE_DEVICES`` ordinals."""

    group: str = Field(description="the job's DeviceGroup name")
    device_type: str
    devices: list[int]


class StartResponse(BaseModel):
    job_id: str
    attempt: int
    entrypoint: str
    user_id: str
    resume_from: ResumeFrom | None = None
    env: dict[str, str] = Field(
        default_factory=dict,
        description="extra job environment the platform asks for; a worker passes only the names in JOB_ENV_NAMES",
    )
    user_env: dict[str, str] = Field(
        default_factory=dict, description="the job owner's own variables (Job.env); the platform's always win"
    )
    args: list[str] = Field(default_factory=list, description="passed after the entrypoint: python ENTRY ARGS...")

    launcher: str = Field(default="python", description="python | torchrun | ray (see contract.jobs.LAUNCHER_DOC)")
    devices: list[AttemptDevices] = Field(
        default_factory=list, description="the devices the attempt may use; empty from an older API: all of them"
    )

JOB_ENV_NAMES = frozenset({"TWINKLE_DETERMINISTIC", "TWINKLE_STOP_AFTER_STEPS"})
"""The only ``StartResponse.env`` names a worker sets: twinkle's deterministic mode and its stop after k optimizer
steps (a replay). Anything else the API sent would be ignored."""


# Every number a worker sends is bounded here, so no value can overflow a database column (SQLite and PostgreSQL
# integers are 64-bit) or smuggle NaN into a JSON answer.
MAX_SEQ = 10**12
MAX_TS = 1e11  # seconds since the epoch: beyond the year 5000


class LogLine(BaseModel):
    ts: float | None = Field(default=None, ge=0, le=MAX_TS, allow_inf_nan=False)
    stream: Literal["stdout", "stderr", "system"] = "stdout"
    text: str = Field(max_length=65536)


BATCH_DOC = (
    "the sender's sequence number for this batch within the attempt; a batch sent again under the same number "
    "(a retry after a lost answer) is applied once"
)


class LogsRequest(BaseModel):
    lines: list[LogLine] = Field(max_length=10_000)
    batch: int | None = Field(default=None, ge=0, le=MAX_SEQ, description=BATCH_DOC)


class Accepted(BaseModel):
    accepted: int


class MetricIn(BaseModel):
    step: int = Field(ge=-1, le=MAX_SEQ)
    ts: float = Field(ge=0, le=MAX_TS, allow_inf_nan=False)
    metrics: dict[str, Any] = Field(max_length=1024, description="name -> value; its JSON is bounded by a setting")


class MetricsRequest(BaseModel):
    records: list[MetricIn] = Field(max_length=10_000)
    batch: int | None = Field(default=None, ge=0, le=MAX_SEQ, description=BATCH_DOC)


class FinishRequest(BaseModel):
    state: Literal["succeeded", "failed", "cancelled"]
    exit_code: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    error: str | None = Field(default=None, max_length=65536)
    limit: str | None = Field(default=None, max_length=1000, description="the worker limit the attempt hit, if any")


class ArtifactStored(BaseModel):
    attempt: int
    path: str
    size: int


class FinishResponse(BaseModel):
    job_id: str
    attempt: int
    state: str = Field(description="the job's state now")
