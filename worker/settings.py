"""Worker settings: one pydantic-settings object read from ``TWINKLE_WORKER_*`` environment variables."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["WorkerSettings"]


class WorkerSettings(BaseSettings):
    """How a donor's worker daemon reaches the platform and what it offers.

    Args:
        server_url: base URL of the scheduler API (``/api/v1`` is appended by the client).
        token: the worker token (``twk_w_...``) an admin created with ``POST /api/v1/worker-tokens``.
        name: how this worker shows up in ``GET /workers``; the hostname by default.
        work_dir: where bundles are unpacked and jobs run (``jobs/{job}/{attempt}``).
        redis_url: overrides the broker URL the API hands out at registration (for a worker behind NAT).
        device_type / ranks / device_model / memory_gb: override what device detection finds.
        heartbeat_interval_s: overrides the interval the API asks for at registration.
        health_host / health_port: where ``GET /healthz`` is served (port 0 picks a free one).
        kill_grace_s: seconds between SIGTERM and SIGKILL when a job is cancelled.
        log_flush_interval_s / log_batch_lines: a log batch is posted every interval or every N lines.
        max_log_line_chars: longer lines are cut, so one runaway print cannot flood the API.
        keep_job_dirs: keep ``jobs/{job}/{attempt}`` after the attempt ended (for debugging).
        assets_dir: the tiny-model cache handed to jobs as ``TWINKLE_ASSETS_DIR`` (also read from that name).
    """

    model_config = SettingsConfigDict(env_prefix="TWINKLE_WORKER_", extra="ignore")

    server_url: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None
    name: str = Field(default_factory=socket.gethostname)
    work_dir: Path = Path("./.twinkle/worker")
    redis_url: str | None = None

    device_type: str | None = None
    ranks: int | None = Field(default=None, ge=1)
    device_model: str | None = None
    memory_gb: float | None = Field(default=None, gt=0)

    heartbeat_interval_s: float | None = Field(default=None, gt=0)
    health_host: str = "0.0.0.0"
    health_port: int = Field(default=8081, ge=0, le=65535)

    kill_grace_s: float = Field(default=10.0, ge=0)
    log_flush_interval_s: float = Field(default=0.5, gt=0)
    log_batch_lines: int = Field(default=200, ge=1)
    max_log_line_chars: int = Field(default=8192, ge=80)
    keep_job_dirs: bool = False
    assets_dir: str | None = Field(
        default=None, validation_alias=AliasChoices("TWINKLE_WORKER_ASSETS_DIR", "TWINKLE_ASSETS_DIR", "assets_dir")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("server_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"server_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    def token_value(self) -> str:
        """The token as plain text; raises with the next step when it is missing."""
        if self.token is None or not self.token.get_secret_value():
            raise ValueError(
                "no worker token: ask the platform admin for one (POST /api/v1/worker-tokens) and pass it with "
                "--token or TWINKLE_WORKER_TOKEN"
            )
        return self.token.get_secret_value()
