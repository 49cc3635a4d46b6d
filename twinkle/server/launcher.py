"""Start a server from a ``ServerConfig``: build the app and serve it with uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

from pathlib import Path

from twinkle.server.config import ServerConfig

__all__ = ["ServerLauncher", "launch_server"]


class ServerLauncher:
    def __init__(self, config: ServerConfig, ray_namespace: str | None = None) -> None:
        if not isinstance(config, ServerConfig):
            raise TypeError(f"ServerLauncher takes a ServerConfig, got {type(config).__name__}; use "
                            f"ServerConfig.model_validate(d) or ServerConfig.from_yaml(path)")
        self.config = config
        self.ray_namespace = ray_namespace  # accepted for upstream's signature; this server does not use Ray

    def launch(self) -> None:
        import sys

        import uvicorn

        from twinkle.server.app import build_app

        # the event loop and the compute worker hand the GIL back and forth on every call; a shorter switch interval
        # than the default 5 ms lets the loop answer a finished call sooner (bench/multitenant.py: client/in-process
        # 1.25 -> 1.19-1.22 in two runs; noisy on a loaded machine)
        sys.setswitchinterval(0.0005)
        app = build_app(self.config)
        opts = self.config.http_options
        uvicorn.run(app, host=opts.host, port=opts.port, log_level="info", timeout_keep_alive=75)


def launch_server(config: ServerConfig | None = None, config_path: str | Path | None = None,
                  ray_namespace: str | None = None) -> None:
    """Serve ``config`` (or the YAML at ``config_path``); blocks until the process is asked to stop."""
    if config is None:
        if config_path is None:
            raise ValueError("launch_server needs config= or config_path=")
        config = ServerConfig.from_yaml(config_path)
    elif config_path is not None:
        raise ValueError("launch_server takes config= or config_path=, not both")
    ServerLauncher(config, ray_namespace).launch()
