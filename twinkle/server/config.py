"""The server's YAML schema (http.md §1.3): pydantic models that reject unknown keys at every level."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AdapterConfig", "ApplicationSpec", "ConfigFileError", "ModelArgs", "ProcessorArgs", "QueueConfig",
    "SamplerArgs", "ServerArgs", "ServerConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfigFileError(ValueError):
    """A config file that is missing, is not YAML, or does not fit the schema; the message says where."""


class HttpOptions(_Strict):
    host: str = "localhost"
    port: int = Field(default=8000, ge=0, le=65535)


class Telemetry(_Strict):
    enabled: bool = False
    service_name: str = "twinkle-server"
    otlp_endpoint: str = "http://localhost:4317"
    debug: bool = False
    export_interval_ms: int = 30000
    resource_attributes: dict[str, Any] = Field(default_factory=dict)


class Persistence(_Strict):
    mode: Literal["memory", "file", "redis"] = "memory"
    file_path: str | None = None
    redis_url: str | None = None
    key_prefix: str = ""

    @model_validator(mode="after")
    def _needs(self) -> Persistence:
        if self.mode == "file" and not self.file_path:
            raise ValueError("persistence.mode 'file' needs file_path")
        if self.mode == "redis" and not self.redis_url:
            raise ValueError("persistence.mode 'redis' needs redis_url")
        return self


class QueueConfig(_Strict):
    """Per-token rate limits and timeouts of a model's compute queue; 0 disables a limit (ours, as documented)."""

    rps_limit: float = 100
    tps_limit: int = 16000
    window_seconds: float = Field(default=1.0, gt=0)
    queue_timeout: float = 300
    execution_timeout: float = 120
    enabled: bool = True
    token_cleanup_multiplier: int = 10
    token_cleanup_interval: float = 60
    max_input_tokens: int = 16000


class AdapterConfig(_Strict):
    adapter_timeout: float = Field(default=1800, gt=0)
    adapter_max_lifetime: float = Field(default=36000, gt=0)


class ServerConfigArgs(_Strict):
    expiration_timeout: float = Field(default=86400, gt=0)
    cleanup_interval: float = Field(default=3600, gt=0)
    per_token_model_limit: int = Field(default=30, ge=0)
    metrics_update_interval: float = 15
    actor_name: str | None = None


class ServerArgs(_Strict):
    server_config: ServerConfigArgs = Field(default_factory=ServerConfigArgs)
    supported_models: list[str | dict[str, str]] = Field(default_factory=list)
    http_options: HttpOptions | None = None
    route_prefix: str | None = None

    def model_names(self) -> list[str]:
        return [m if isinstance(m, str) else m["model_name"] for m in self.supported_models]


class ModelArgs(_Strict):
    model_id: str
    nproc_per_node: int = 1
    device_group: dict[str, Any]
    device_mesh: dict[str, Any]
    backend: Literal["transformers", "megatron", "mock"]
    adapter_config: AdapterConfig = Field(default_factory=AdapterConfig)
    queue_config: QueueConfig = Field(default_factory=QueueConfig)
    max_loras: int = Field(default=5, ge=1)
    max_length: int | None = Field(default=None, ge=1)


class SamplerArgs(_Strict):
    model_id: str
    nproc_per_node: int = 1
    device_group: dict[str, Any]
    device_mesh: dict[str, Any]
    sampler_type: Literal["vllm", "torch", "mock"]
    engine_args: dict[str, Any] = Field(default_factory=dict)
    queue_config: QueueConfig = Field(default_factory=QueueConfig)


class ProcessorArgs(_Strict):
    ncpu_proc_per_node: int | None = None
    device_group: dict[str, Any] | None = None
    device_mesh: dict[str, Any] | None = None
    queue_config: QueueConfig | None = None


_ARGS: dict[str, type[BaseModel]] = {
    "server": ServerArgs, "model": ModelArgs, "sampler": SamplerArgs, "processor": ProcessorArgs,
}


class ApplicationSpec(_Strict):
    name: str
    route_prefix: str = "/"
    import_path: Literal["server", "model", "sampler", "processor"]
    args: dict[str, Any] | None = None
    deployments: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("route_prefix")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {value!r}")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _typed_args(self) -> ApplicationSpec:
        self.args = _ARGS[self.import_path].model_validate(self.args or {}).model_dump()
        return self

    def typed_args(self) -> Any:
        return _ARGS[self.import_path].model_validate(self.args or {})


class ServerConfig(_Strict):
    ray_namespace: str | None = None
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = "EveryNode"
    http_options: HttpOptions = Field(default_factory=HttpOptions)
    telemetry: Telemetry = Field(default_factory=Telemetry)
    persistence: Persistence = Field(default_factory=Persistence)
    task_queue: Any = None  # unused, as upstream
    applications: list[ApplicationSpec] = Field(default_factory=list)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ServerConfig:
        """Read and validate a config file; raises ``ConfigFileError`` naming the file and the bad key."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigFileError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigFileError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigFileError(f"{path}: the top level must be a mapping with 'applications'")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigFileError(f"{path}: {_readable(exc)}") from exc

    @classmethod
    def single_model(cls, model_id: str, *, max_loras: int = 4, port: int = 8000, host: str = "127.0.0.1",
                     max_length: int | None = None, name: str | None = None, sampler: bool = True,
                     adapter_timeout: float = 1800) -> ServerConfig:
        """The config behind the short form ``twinkle-server --model PATH --max-loras N --port P``."""
        name = name or model_id.rstrip("/").split("://")[-1]
        devices = {"device_group": {"name": "default", "ranks": 1, "device_type": "auto"},
                   "device_mesh": {"dp_size": 1, "device_type": "auto"}}
        apps = [
            {"name": "server", "route_prefix": "/api/v1", "import_path": "server",
             "args": {"supported_models": [name]}},
            {"name": "model", "route_prefix": f"/api/v1/model/{name}", "import_path": "model",
             "args": {"model_id": model_id, "backend": "transformers", "max_loras": max_loras,
                      "max_length": max_length, "adapter_config": {"adapter_timeout": adapter_timeout}, **devices}},
        ]
        if sampler:
            apps.append({"name": "sampler", "route_prefix": f"/api/v1/sampler/{name}", "import_path": "sampler",
                         "args": {"model_id": model_id, "sampler_type": "torch", **devices}})
        apps.append({"name": "processor", "route_prefix": "/api/v1/processor", "import_path": "processor",
                     "args": {}})
        return cls.model_validate({"http_options": {"host": host, "port": port}, "applications": apps})


def _readable(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}; remove it (see docs/http-mode.md for the schema)")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
