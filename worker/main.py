"""``twinkle-worker``: donate this machine's devices to a Twinkle Commons platform."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from worker.client import AuthError, ServerUnavailable
from worker.settings import WorkerSettings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help=(
        "Run a worker daemon: register this machine's devices with the platform at --server, then run the jobs "
        "the scheduler assigns to it, each in a child process group with a scrubbed environment.\n\n"
        "Get a worker token from the platform admin (POST /api/v1/worker-tokens). Every option can also be set "
        "as an environment variable TWINKLE_WORKER_<NAME> (e.g. TWINKLE_WORKER_TOKEN)."
    )
)
def run(
    server: Annotated[str | None, typer.Option(help="The platform's API URL, e.g. https://twinkle.example.org")] = None,
    token: Annotated[str | None, typer.Option(help="Worker token (twk_w_...), or TWINKLE_WORKER_TOKEN")] = None,
    name: Annotated[str | None, typer.Option(help="Name shown to users (default: the hostname)")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Where jobs are unpacked and run")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Broker URL, overriding the one the API hands out")] = None,
    device_type: Annotated[str | None, typer.Option(help="Override detection: cuda, cpu, npu, ...")] = None,
    ranks: Annotated[int | None, typer.Option(help="Override detection: number of devices (ranks) offered")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="Override detection: memory per device in GB")] = None,
    health_port: Annotated[int | None, typer.Option(help="Port of GET /healthz (default 8081; 0 = any)")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = None,
    show_devices: Annotated[
        bool, typer.Option("--show-devices", help="Print what would be offered, then exit")
    ] = False,
) -> None:
    overrides: dict[str, Any] = {  # validated by WorkerSettings
        "server_url": server,
        "token": token,
        "name": name,
        "work_dir": work_dir,
        "redis_url": redis_url,
        "device_type": device_type,
        "ranks": ranks,
        "memory_gb": memory_gb,
        "health_port": health_port,
        "log_level": log_level.upper() if log_level else None,
    }
    try:
        settings = WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            typer.echo(f"error: {field}: {err['msg']}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # one line per request (heartbeats, log batches) would drown what matters
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from worker.devices import offer_from_settings

    if show_devices:
        typer.echo(json.dumps(offer_from_settings(settings).as_dict(), indent=2))
        return
    try:
        settings.token_value()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    from worker.daemon import WorkerDaemon
    from worker.leftovers import WorkDirInUse

    daemon = WorkerDaemon(settings)
    try:
        daemon.run()
    except AuthError:
        typer.echo(
            f"error: {settings.server_url} refused the worker token; check --token (a worker token starts twk_w_, "
            "ask the platform admin for one)",
            err=True,
        )
        raise typer.Exit(3) from None
    except ServerUnavailable as exc:
        typer.echo(f"error: cannot reach {settings.server_url}: {exc}", err=True)
        raise typer.Exit(4) from None
    except WorkDirInUse as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(5) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
