"""``twinkle-scheduler``: serve the API, run the dispatcher, manage users, or bring up the whole stack."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from scheduler.settings import DEFAULT_SECRET, Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The Twinkle Commons scheduler: HTTP API, dispatcher (matcher + reaper) and the embedded stack.",
)
console = Console()


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the variable and the fix
        console.print(f"[red]invalid scheduler settings:[/red] {exc}")
        raise typer.Exit(2) from exc


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default TWINKLE_SCHEDULER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default TWINKLE_SCHEDULER_PORT)")] = None,
    log_level: str = "info",
    workers: Annotated[
        int | None, typer.Option(help="API processes sharing the port (default TWINKLE_SCHEDULER_API_WORKERS)")
    ] = None,
) -> None:
    """Run the HTTP API (migrates the database first)."""
    import os

    import uvicorn

    from scheduler.main import create_app

    _logging(log_level)
    s = _settings()
    chosen_development = "environment" in s.model_fields_set and s.environment == "development"
    if s.secret_key.get_secret_value() == DEFAULT_SECRET and not chosen_development:
        # the default would let anyone who reads the source forge sessions and download links
        console.print(
            "[red]TWINKLE_SCHEDULER_SECRET_KEY is not set[/red]: the API would sign sessions and download links with "
            "the public default. Set it (python -c 'import secrets; print(secrets.token_urlsafe(32))'), or set "
            "TWINKLE_SCHEDULER_ENVIRONMENT=development for a throwaway local server (`twinkle-scheduler up` makes "
            "a secret for you)."
        )
        raise typer.Exit(2)
    n = workers or s.api_workers
    if n > 1:  # uvicorn forks processes that each build the app; migrate once here, not in every process
        if s.run_migrations:
            from scheduler.db import migrate

            migrate(s.database_url)
        os.environ["TWINKLE_SCHEDULER_RUN_MIGRATIONS"] = "false"
        uvicorn.run(
            "scheduler.main:create_app", factory=True, workers=n, host=host or s.host, port=port or s.port,
            log_level=log_level, proxy_headers=True,
        )
        return
    uvicorn.run(create_app(s), host=host or s.host, port=port or s.port, log_level=log_level, proxy_headers=True)


@app.command()
def dispatch(
    once: Annotated[bool, typer.Option(help="run one matcher and one reaper round, then exit")] = False,
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus metrics (dispatch latency) here")] = None,
    log_level: str = "info",
) -> None:
    """Run the matcher and the reaper every DISPATCH_INTERVAL_S (a plain loop; see scheduler/tasks/dispatcher.py)."""
    import signal

    from scheduler.runtime import Runtime
    from scheduler.tasks.dispatcher import run_loop, scheduled_tasks

    _logging(log_level)
    rt = Runtime.from_settings(_settings())
    if once:
        for task in scheduled_tasks(rt):
            console.print(f"{task.name}: {task.run()}")
        rt.close()
        return
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger(__name__).info("dispatcher running every %ss", rt.settings.dispatch_interval_s)
    run_loop(rt, stop)
    rt.close()


@app.command()
def migrate() -> None:
    """Upgrade the database to the latest schema (alembic upgrade head)."""
    from scheduler.db import migrate as do_migrate

    s = _settings()
    do_migrate(s.database_url)
    console.print(f"database at {s.database_url} is at the latest schema")


@app.command("create-user")
def create_user(
    name: str, quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the token")] = False
) -> None:
    """Create a user (or add a token to an existing one) and print its API token."""
    from scheduler.db import Database
    from scheduler.db import migrate as do_migrate
    from scheduler.services.users import get_or_create_user

    s = _settings()
    do_migrate(s.database_url)
    db = Database(s.database_url)
    with db.session() as session:
        user, token = get_or_create_user(session, name)
        session.commit()
    db.dispose()
    if quiet:
        print(token)
    else:
        console.print(f"user [bold]{user.name}[/bold] ({user.id}); token (shown once):")
        print(token)


@app.command("create-worker-token")
def create_worker_token(
    owner: str,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    trusted: Annotated[
        bool, typer.Option("--trusted", help="a platform pool: not spot-checked, runs the replays of donors' work")
    ] = False,
    pre_approved: Annotated[
        bool, typer.Option("--pre-approved", help="its workers get jobs without an admin's approval")
    ] = False,
    pool: Annotated[
        bool, typer.Option("--pool", help="a trusted pool's token, shared by its nodes (one live worker per name)")
    ] = False,
) -> None:
    """Create a worker token for OWNER's machines and print it. One live worker per token (a second registration
    supersedes the first): give each donor machine its own, or make a --pool token for a trusted pool."""
    from scheduler.db import Database
    from scheduler.db import migrate as do_migrate
    from scheduler.services.users import create_worker_token as mint

    s = _settings()
    do_migrate(s.database_url)
    db = Database(s.database_url)
    with db.session() as session:
        token = mint(session, owner, trusted=trusted, approved=pre_approved, pool=pool)
        session.commit()
    db.dispose()
    if not quiet:
        console.print(f"worker token for [bold]{owner}[/bold] (shown once):")
    print(token)


def _admin_worker_action(worker_id: str, action: str) -> None:
    from scheduler.db import Database
    from scheduler.db import migrate as do_migrate
    from scheduler.errors import SchedulerError
    from scheduler.services import workers as workers_service
    from scheduler.services.users import Principal

    s = _settings()
    do_migrate(s.database_url)
    db = Database(s.database_url)
    try:
        with db.session() as session:
            if action == "revoke":
                workers_service.revoke(session, Principal(kind="admin"), worker_id, max_attempts=s.max_attempts)
            else:
                workers_service.approve(session, worker_id)
    except SchedulerError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    finally:
        db.dispose()


@app.command("revoke-worker")
def revoke_worker(worker_id: str) -> None:
    """Revoke the worker token WORKER_ID registered with (see `twinkle-submit workers`): its workers get no more
    jobs, and what they run is requeued. Same as POST /api/v1/workers/{id}/revoke with the admin token."""
    _admin_worker_action(worker_id, "revoke")
    console.print(f"revoked the token of worker {worker_id}; its jobs were requeued")


@app.command("approve-worker")
def approve_worker(worker_id: str) -> None:
    """Approve the worker token WORKER_ID registered with: its workers get jobs (where approval is required)."""
    _admin_worker_action(worker_id, "approve")
    console.print(f"approved the token of worker {worker_id}")


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="database, storage and embedded Redis live here")] = Path(".twinkle"),
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port; 0 picks a free one")] = 8000,
    config_path: Annotated[
        Path, typer.Option(help="where the user token is written for twinkle-submit")
    ] = Path("~/.config/twinkle/config.toml"),
    worker: Annotated[bool, typer.Option(help="start one local twinkle-worker offering this machine's devices")] = True,
    submit: Annotated[Path | None, typer.Option(help="submit this script once the stack is up")] = None,
    follow: Annotated[bool, typer.Option(help="with --submit: follow its logs to the end")] = True,
    keep_running: Annotated[
        bool, typer.Option(help="with --submit: keep the stack running after the job ends")
    ] = False,
    user: Annotated[str, typer.Option(help="name of the local user")] = "local",
    log_level: str = "warning",
) -> None:
    """The embedded all-in-one stack: SQLite, local storage, an embedded Redis (unless REDIS_URL is set),
    the API, the dispatcher and one local worker. Runs until Ctrl-C and stops everything cleanly."""
    from scheduler.up import Stack

    _logging(log_level)
    stack = Stack(
        data_dir=data_dir, host=host, port=port, config_path=config_path.expanduser(), start_worker=worker,
        user=user, console=console,
    )
    code = stack.run(submit=submit, follow=follow, keep_running=keep_running)
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
