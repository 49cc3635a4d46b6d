"""``twinkle-worker``: donate this machine's devices to a Twinkle Commons platform.

The token never stays where another process could read it: from ``--token-file`` (mode 0600) or
``TWINKLE_WORKER_TOKEN``, and when it came through the environment (or the deprecated ``--token``), the daemon
re-executes itself once with the token on an inherited pipe, so neither ``/proc/<pid>/environ`` nor
``/proc/<pid>/cmdline`` of the running daemon holds it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from worker.client import AuthError, ServerUnavailable
from worker.settings import WorkerSettings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

TOKEN_ENV = "TWINKLE_WORKER_TOKEN"
_NO_SANDBOX_WARNING = (
    "WARNING: isolation 'none': jobs run as this user, with its files (~/.ssh, cloud credentials), its network "
    "(the API, Redis, the LAN) and its processes in reach. Only for a pool where you trust every job's author."
)


def _settings_or_exit(overrides: dict) -> WorkerSettings:
    try:
        return WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            typer.echo(f"error: {field}: {err['msg']}", err=True)
        raise typer.Exit(2) from None


def _strip_token_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--token":
            skip = True
        elif not arg.startswith(("--token=", "--token-fd")):
            out.append(arg)
    return out


def _reexec_without_token(token: str) -> None:  # pragma: no cover - replaces the process; tested end to end
    """Start this program again with the token on a pipe instead of in argv or the environment."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, token.encode())
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    argv = [*_strip_token_args(list(sys.orig_argv)), f"--token-fd={read_fd}"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


@app.callback(
    invoke_without_command=True,
    help=(
        "Run a worker daemon: register this machine's devices with the platform at --server, then run the jobs "
        "the scheduler assigns to it, each in a sandbox (bubblewrap: no network, no view of this machine's "
        "files or processes, memory/pids/disk limits).\n\n"
        "Get a worker token from the platform admin (POST /api/v1/worker-tokens), save it in a file only you can "
        "read (chmod 600) and pass --token-file. Every option can also be set as an environment variable "
        "TWINKLE_WORKER_<NAME> (e.g. TWINKLE_WORKER_TOKEN_FILE). `twinkle-worker doctor` checks the sandbox."
    ),
)
def run(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option(help="The platform's API URL, e.g. https://twinkle.example.org")] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the worker token (twk_w_...), mode 0600")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Deprecated: visible to every user in `ps`; use --token-file or TWINKLE_WORKER_TOKEN"),
    ] = None,
    token_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
    name: Annotated[str | None, typer.Option(help="Name shown to users (default: the hostname)")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Where jobs are unpacked and run")] = None,
    device_type: Annotated[str | None, typer.Option(help="Override detection: cuda, cpu, npu, ...")] = None,
    ranks: Annotated[int | None, typer.Option(help="Override detection: number of devices (ranks) offered")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="Override detection: memory per device in GB")] = None,
    share_devices: Annotated[
        bool | None,
        typer.Option(
            "--share-devices/--one-job-at-a-time",
            help="Offer the devices as a pool shared by count: jobs take as many as they need and run side by side "
            "on disjoint devices (default); or as one slot that runs one job at a time on all of them",
        ),
    ] = None,
    health_port: Annotated[int | None, typer.Option(help="Port of GET /healthz (default 8081; 0 = any)")] = None,
    health_host: Annotated[
        str | None, typer.Option(help="Address of GET /healthz (default 127.0.0.1; 0.0.0.0 for a kubelet probe)")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = None,
    isolation: Annotated[
        str | None, typer.Option(help="bwrap (default), container (the pod/VM is the sandbox) or none")
    ] = None,
    trusted_pool: Annotated[
        bool, typer.Option("--trusted-pool", help="Allow --isolation none: every job can read what this user can")
    ] = False,
    show_devices: Annotated[
        bool, typer.Option("--show-devices", help="Print what would be offered, then exit")
    ] = False,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if token is not None:
        typer.echo("warning: --token is deprecated (any user sees it in `ps`); use --token-file", err=True)
    if token_fd is not None:  # the re-executed daemon: read the token from the pipe and close it
        with os.fdopen(token_fd, "rb") as pipe:
            token = pipe.read().decode()
    elif (token is not None or os.environ.get(TOKEN_ENV)) and not show_devices:
        _reexec_without_token(token or os.environ[TOKEN_ENV])
    overrides: dict[str, Any] = {  # validated by WorkerSettings
        "server_url": server,
        "token": token,
        "token_file": token_file,
        "name": name,
        "work_dir": work_dir,
        "device_type": device_type,
        "ranks": ranks,
        "memory_gb": memory_gb,
        "share_devices": share_devices,
        "health_port": health_port,
        "health_host": health_host,
        "log_level": log_level.upper() if log_level else None,
        "isolation": isolation,
        "trusted_pool": trusted_pool or None,
    }
    settings = _settings_or_exit(overrides)
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
    if settings.isolation == "none":
        typer.secho(_NO_SANDBOX_WARNING, fg=typer.colors.RED, bold=True, err=True)

    from worker.daemon import WorkerDaemon, WorkerStopped
    from worker.leftovers import WorkDirInUse
    from worker.sandbox import SandboxError

    try:
        daemon = WorkerDaemon(settings)
    except SandboxError as exc:
        typer.echo(f"error: the job sandbox cannot run here: {exc}", err=True)
        raise typer.Exit(6) from None
    try:
        daemon.run()
    except AuthError:
        typer.echo(
            f"error: {settings.server_url} refused the worker token; check --token-file (a worker token starts "
            "twk_w_, ask the platform admin for one)",
            err=True,
        )
        raise typer.Exit(3) from None
    except ServerUnavailable as exc:
        typer.echo(f"error: cannot reach {settings.server_url}: {exc}", err=True)
        raise typer.Exit(4) from None
    except WorkDirInUse as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(5) from None
    except WorkerStopped as exc:
        typer.echo(f"error: the platform stopped this worker: {exc}", err=True)
        raise typer.Exit(7) from None


@app.command(help="Print the isolation this worker would use (bwrap version, user namespaces, cgroups, limits).")
def doctor(
    isolation: Annotated[str | None, typer.Option(help="bwrap (default), container or none")] = None,
    trusted_pool: Annotated[bool, typer.Option("--trusted-pool")] = False,
) -> None:
    from worker.sandbox import SandboxError, create_sandbox, format_bytes

    settings = _settings_or_exit({"isolation": isolation, "trusted_pool": trusted_pool or None})
    limits = settings.limits()
    try:
        sandbox = create_sandbox(
            settings.isolation,
            bwrap=settings.bwrap_path,
            use_cgroups=settings.use_cgroups,
            egress_allow=tuple(settings.egress_allow) if settings.egress else (),
        )
    except SandboxError as exc:
        typer.echo(f"isolation: {settings.isolation}: NOT AVAILABLE\n  {exc}")
        raise typer.Exit(6) from None
    for key, value in sandbox.describe().items():
        typer.echo(f"{key}: {value}")
    shown = {
        "memory": format_bytes(limits.memory_bytes) if limits.memory_bytes else "none",
        "pids": limits.pids or "none",
        "cpus": limits.cpus or "all",
        "disk": format_bytes(limits.disk_bytes) if limits.disk_bytes else "none",
    }
    typer.echo("limits per attempt: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    if settings.isolation == "none":
        typer.secho(_NO_SANDBOX_WARNING, fg=typer.colors.RED, bold=True, err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
