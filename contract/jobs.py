from __future__ import annotations

import datetime as dt
import re
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


# ---------------------------------------------------------------- environment variables and arguments of a job
MAX_ENV_VARS = 64
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 4096
MAX_ARGS = 256
MAX_ARG = 4096
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = frozenset({
    "HOME", "TMPDIR", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
    "ASCEND_RT_VISIBLE_DEVICES",
})
"""Variables the worker sets for every job (the job folder, its devices); a job cannot set them."""
RESERVED_ENV_PREFIX = "TWINKLE_"
"""``TWINKLE_*`` is the platform's contract with the job (TWINKLE_OUTPUT_DIR, TWINKLE_METRICS_FILE, ...)."""


def env_problems(env: Any, field: str = "env") -> list[tuple[str, str]]:
    """Every problem of a job's environment variables, as ``(field, message)``; empty when it is valid.

    Names are shell identifiers, neither reserved (:data:`RESERVED_ENV`) nor ``TWINKLE_*``; values are text
    without NUL (execve cannot pass one) of at most :data:`MAX_ENV_VALUE` characters."""
    if not isinstance(env, dict):
        return [(field, f"{field} must be an object of NAME: value strings")]
    out: list[tuple[str, str]] = []
    if len(env) > MAX_ENV_VARS:
        out.append((field, f"at most {MAX_ENV_VARS} environment variables, not {len(env)}"))
    for name, value in list(env.items())[: MAX_ENV_VARS + 1]:
        where = f"{field}.{str(name)[:40]}"
        if not isinstance(name, str) or len(name) > MAX_ENV_NAME or not ENV_NAME.fullmatch(name):
            out.append((where, f"{str(name)[:40]!r} is not a variable name (letters, digits and _, not first a digit)"))
        elif name.upper().startswith(RESERVED_ENV_PREFIX) or name.upper() in RESERVED_ENV:
            out.append((where, f"{name} is set by the platform for every job and cannot be overridden"))
        if not isinstance(value, str):
            out.append((where, "the value must be a string"))
        elif len(value) > MAX_ENV_VALUE:
            out.append((where, f"the value is {len(value)} characters; at most {MAX_ENV_VALUE}"))
        elif "\x00" in value:
            out.append((where, "the value contains a NUL character"))
    return out


def args_problems(args: Any, field: str = "args") -> list[tuple[str, str]]:
    """Every problem of a job's command-line arguments (a list of at most :data:`MAX_ARGS` strings)."""
    if not isinstance(args, list):
        return [(field, f"{field} must be a list of strings")]
    out: list[tuple[str, str]] = []
    if len(args) > MAX_ARGS:
        out.append((field, f"at most {MAX_ARGS} arguments, not {len(args)}"))
    for i, arg in enumerate(args[: MAX_ARGS + 1]):
        if not isinstance(arg, str):
            out.append((f"{field}.{i}", "each argument must be a string"))
        elif len(arg) > MAX_ARG:
            out.append((f"{field}.{i}", f"the argument is {len(arg)} characters; at most {MAX_ARG}"))
        elif "\x00" in arg:
            out.append((f"{field}.{i}", "the argument contains a NUL character"))
    return out


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


class Failure(BaseModel):
    """Why a job (its last attempt) failed, computed by the API from the attempt's end report and its log."""

    attempt: int
    kind: Literal["exit_code", "signal", "limit", "lost", "error"] = Field(
        description="exit_code: the script exited non-zero; signal: it was killed by a signal; limit: a limit "
        "of the worker (memory, time, disk, processes) stopped it; lost: its worker went away; error: the "
        "platform could not run it (e.g. the bundle)"
    )
    summary: str = Field(description="one line, e.g. 'exit code 1', 'killed by signal SIGKILL', 'memory limit "
                         "8 GiB reached'")
    exit_code: int | None
    signal: str | None = Field(description="signal name (SIGKILL, ...) when the process was killed by one")
    limit: str | None = Field(description="the limit that was hit, as the worker reported it")
    stderr_tail: list[str] = Field(description="the last lines (at most 20) the attempt wrote to stderr")


Phase = Literal["held", "queued", "starting", "running", "stopping", "validating", "succeeded", "failed", "cancelled"]


class Attempt(BaseModel):
    n: int
    worker_id: str | None
    worker_name: str | None = Field(default=None, description="the worker's name, as on the workers page")
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
    phase: Phase = Field(
        default="queued",
        description="what to show the user: the state, except 'held' (queued, but no worker can run it now), "
        "'starting' (assigned, not yet started) and 'stopping' (cancel asked, the worker is stopping it)",
    )
    attempt: int = Field(description="number of the live (or last) attempt; 0 before the first")
    worker_id: str | None
    worker_name: str | None = Field(default=None, description="the worker's name, as on the workers page")
    queue_position: int | None = Field(
        description="estimated 1-based place in the dispatch order while queued, counting only queued, not "
        "held jobs that could run on a worker this job could run on (users take turns, each user first in, "
        "first out; the dispatcher also weighs fair share and free slot shapes); null while held"
    )
    expected_start_at: dt.datetime | None = Field(
        default=None,
        description="estimated start (like squeue --start): the jobs ahead and the running ones on the workers "
        "that could run this job, each taking the mean duration of recent jobs; null while held or without history",
    )
    pending_reason: str | None = Field(description="why a queued job is waiting")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables given to the script")
    args: list[str] = Field(default_factory=list, description="command-line arguments given to the script")
    resubmitted_from: str | None = Field(default=None, description="the job this one was resubmitted from")
    duration_s: float | None = Field(default=None, description="seconds from start to end (or to now while running)")
    failure: Failure | None = Field(default=None, description="why the job failed (failed jobs only)")
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    attempts: list[Attempt]


class ResubmitRequest(BaseModel):
    """Run a job's bundle again as a new job. A field left out (null) keeps the original's value."""

    name: str | None = Field(default=None, max_length=255)
    env: dict[str, str] | None = Field(default=None, description="replaces the original's environment variables")
    args: list[str] | None = Field(default=None, description="replaces the original's arguments")
    request: JobRequest | None = Field(default=None, description="replaces the original's DeviceGroups")


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


SYS_METRIC_PREFIX = "sys/"
"""Metrics the worker samples itself (not the script), e.g. ``sys/cpu_percent``, ``sys/rss_bytes``,
``sys/gpu0/util_percent``, ``sys/gpu0/memory_bytes``; chart them against ``ts``."""

MetricSeries = Literal["all", "training", "system"]
"""Which records ``GET /jobs/{id}/metrics?series=`` returns: every one, the script's (training), or the worker's
``sys/`` samples (system), as W&B keeps system metrics apart from the run's own."""


def is_system_record(metrics: dict[str, Any]) -> bool:
    """A record of the worker's ``sys/`` samples only (the script's records may carry ``sys/`` keys besides its
    own; those count as training)."""
    return bool(metrics) and all(str(k).startswith(SYS_METRIC_PREFIX) for k in metrics)


class LogEntry(BaseModel):
    """One log line with its attempt, time and stream (``GET /jobs/{id}/logs?format=json``, and the SSE
    stream's ``data`` with ``?format=json``)."""

    id: str | None = Field(default=None, description="the live stream's id of the line, when it came from Redis")
    attempt: int
    ts: float | None = Field(description="seconds since the epoch when the worker read the line")
    stream: Literal["stdout", "stderr", "system"]
    text: str


class LogEntries(BaseModel):
    lines: list[LogEntry]


class Artifact(BaseModel):
    attempt: int
    path: str
    size: int
    url: str = Field(description="presigned, short-lived download link")


class ArtifactList(BaseModel):
    items: list[Artifact]
