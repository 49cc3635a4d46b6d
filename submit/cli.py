"""``twinkle-submit``: submit twinkle training scripts to a Twinkle Commons platform and follow them.

``twinkle-submit train.py`` is ``twinkle-submit submit train.py``.
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from submit.bundle import BundleError, make_bundle
from submit.client import Client, InvalidInput, SubmitError, resolve_connection


class Launcher(StrEnum):
    """How the worker starts the script (``contract.jobs.LAUNCHERS``)."""

    python = "python"
    torchrun = "torchrun"
    ray = "ray"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Submit twinkle training scripts to a Twinkle Commons platform: `twinkle-submit train.py --follow`.",
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ServerOpt = Annotated[str | None, typer.Option("--server", help="API URL (or TWINKLE_API_URL; default http://127.0.0.1:8000)")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="API token (or TWINKLE_TOKEN, or ~/.config/twinkle/config.toml)")
]
COMMANDS = {"submit", "list", "status", "logs", "cancel", "download", "inspect", "workers", "revoke-worker"}


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _client(server: str | None, token: str | None) -> Client:
    url, tok = resolve_connection(server, token)
    return Client(url, tok)


def _print_input_error(exc: InvalidInput) -> None:
    err.print(f"[bold red]error:[/] the server refused the request: {exc.message}", markup=True, soft_wrap=True)
    for field, problem in exc.fields.items():
        text = "; ".join(map(str, problem)) if isinstance(problem, list) else str(problem)
        err.print(f"  - {field}: {text}", markup=False, soft_wrap=True)


def _run(fn) -> None:
    """Turn every expected failure into a message and a non-zero exit (2 for bad input, 1 for the rest)."""
    try:
        fn()
    except InvalidInput as exc:
        _print_input_error(exc)
        raise typer.Exit(2) from None
    except BundleError as exc:
        raise _fail(str(exc), 2) from None
    except SubmitError as exc:
        raise _fail(str(exc), 1) from None


def parse_memory_gb(text: str) -> float:
    """``24GB``, ``24G``, ``16GiB``, ``24`` -> GB as a float."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(g|gb|gib)?\s*", text, re.IGNORECASE)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a memory size; write e.g. 24GB")
    return float(m.group(1))


def _request_from_flags(
    client: Client, script: Path, ranks: int | None, device_type: str | None, gpu_memory: str | None
) -> dict | None:
    if ranks is None and device_type is None and gpu_memory is None:
        return None  # the scheduler reads the script's DeviceGroups
    groups = client.inspect(script.read_bytes(), script.name).get("request", {}).get("device_groups") or []
    group = dict(groups[0]) if groups else {"name": "default", "ranks": 1, "device_type": "cuda"}
    if ranks is not None:
        group["ranks"] = ranks
    if device_type is not None:
        group["device_type"] = device_type
    if gpu_memory is not None:
        group["min_memory_gb"] = parse_memory_gb(gpu_memory)
    return {"device_groups": [group, *groups[1:]]}


def _follow(client: Client, job_id: str) -> str:
    for event in client.stream_logs(job_id):
        if event.event == "end":
            break
        out.print(event.data, markup=False, highlight=False, soft_wrap=True)
    state = client.job(job_id).get("state", "unknown")
    err.print(f"job {job_id} {state}", markup=False)
    return state


@app.command()
def submit(
    script: Annotated[Path, typer.Argument(help="The training script; its folder is bundled with it")],
    ranks: Annotated[
        int | None, typer.Option(min=1, help="Ranks (devices) the job needs; overrides the script")
    ] = None,
    device_type: Annotated[str | None, typer.Option(help="cuda, cpu, npu, ...; overrides the script")] = None,
    gpu_memory: Annotated[str | None, typer.Option(help="Minimum memory per device, e.g. 24GB")] = None,
    name: Annotated[str | None, typer.Option(help="A name for the job")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the logs until the job ends")] = False,
    launcher: Annotated[
        Launcher | None,
        typer.Option(
            help="How the worker starts the script: python (one process), torchrun (local mode, one process per "
            "device) or ray (a Ray cluster of the job's own). Default: read from the script's "
            "twinkle.initialize(mode=...) and DeviceGroups",
            case_sensitive=False,
        ),
    ] = None,
    allow_unsandboxed: Annotated[
        bool,
        typer.Option(
            "--allow-unsandboxed",
            help="Let the job run on a worker without a sandbox (isolation 'none', a trusted pool). By default a "
            "job runs only where the worker isolates it (bwrap or a container runtime)",
        ),
    ] = False,
    max_bundle_mb: Annotated[
        float,
        typer.Option(
            help="Refuse bundles larger than this (the server has its own limit too)", envvar="TWINKLE_MAX_BUNDLE_MB"
        ),
    ] = 100.0,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Bundle SCRIPT's folder, submit it as a job, print its id and place in the queue."""
    result: dict = {}

    def go() -> None:
        bundle = make_bundle(script, max_mb=max_bundle_mb)
        with _client(server, token) as client:
            request = _request_from_flags(client, script, ranks, device_type, gpu_memory)
            job = client.submit(bundle.data, bundle.entrypoint, name=name or script.stem, request=request,
                                allow_unsandboxed=allow_unsandboxed,
                                launcher=launcher.value if launcher is not None else None)
            job_id = job["id"]
            for warning in job.get("warnings") or []:
                err.print(f"warning: {warning}", markup=False, soft_wrap=True)
            if allow_unsandboxed:
                err.print("note: --allow-unsandboxed: this job may run on a worker that does not isolate it; use it "
                          "only with a pool you trust", markup=False, soft_wrap=True)
            out.print(f"submitted job [bold]{job_id}[/] ({len(bundle.files)} files, {bundle.size / 1024:.0f} KB), "
                      f"launched with {job.get('request', {}).get('launcher', 'python')}")
            position, reason = job.get("queue_position"), job.get("pending_reason")
            if position is not None:
                out.print(f"place in the queue: {position}")
            if reason:
                out.print(f"pending: {reason}", markup=False)
            if follow:
                result["state"] = _follow(client, job_id)

    _run(go)
    if follow and result.get("state") != "succeeded":
        raise typer.Exit(1)


@app.command("list")
def list_jobs(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state (queued, running, succeeded, ...)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Your jobs, newest first."""

    def go() -> None:
        with _client(server, token) as client:
            page = client.list_jobs(state=state, limit=limit)
        table = Table("id", "name", "state", "created", "queue", box=None)
        for job in page.get("items", []):
            pos = job.get("queue_position")
            table.add_row(str(job.get("id")), str(job.get("name") or ""), str(job.get("state")),
                          str(job.get("created_at") or "")[:19], "" if pos is None else str(pos))
        out.print(table)
        out.print(f"{len(page.get('items', []))} of {page.get('total', '?')} jobs")

    _run(go)


@app.command()
def status(job_id: str, server: ServerOpt = None, token: TokenOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the raw job")] = False) -> None:
    """A job's state, place in the queue and attempts."""

    def go() -> None:
        with _client(server, token) as client:
            job = client.job(job_id)
        if as_json:
            print(json.dumps(job, indent=2))
            return
        out.print(f"job {job.get('id')}  [bold]{job.get('state')}[/]  {job.get('name') or ''}")
        if job.get("queue_position") is not None:
            out.print(f"place in the queue: {job['queue_position']}")
        if job.get("pending_reason"):
            out.print(f"pending: {job['pending_reason']}", markup=False)
        attempts = job.get("attempts") or []
        if attempts:
            table = Table("attempt", "worker", "state", "started", "ended", "exit", "error", box=None)
            for a in attempts:
                table.add_row(str(a.get("n")), str(a.get("worker_id") or ""), str(a.get("state")),
                              str(a.get("started_at") or "")[:19], str(a.get("ended_at") or "")[:19],
                              "" if a.get("exit_code") is None else str(a.get("exit_code")),
                              (a.get("error") or "").splitlines()[-1][:80] if a.get("error") else "")
            out.print(table)

    _run(go)


@app.command()
def logs(job_id: str, follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends")] = False,
         server: ServerOpt = None, token: TokenOpt = None) -> None:
    """A job's log (all attempts); with -f, stream it live until the job ends."""

    def go() -> None:
        with _client(server, token) as client:
            if follow:
                _follow(client, job_id)
            else:
                sys.stdout.write(client.logs(job_id))

    _run(go)


@app.command()
def cancel(job_id: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Cancel a queued or running job."""

    def go() -> None:
        with _client(server, token) as client:
            job = client.cancel(job_id)
        out.print(f"job {job_id}: {job.get('state')}")

    _run(go)


@app.command("workers")
def list_workers(server: ServerOpt = None, token: TokenOpt = None) -> None:
    """List the donated workers: state (awaiting approval, superseded, revoked), devices, isolation."""

    def go() -> None:
        with _client(server, token) as client:
            items = client.workers()
        for w in items:
            groups = ", ".join(f"{g['ranks']}x{g['device_type']}" for g in w["device_groups"])
            out.print(f"{w['id']}  {w['name']:<20} {w['owner'] or '-':<12} {w['status'] or w['state']:<20} "
                      f"{groups} ({w['isolation']})")

    _run(go)


@app.command("revoke-worker")
def revoke_worker(worker_id: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Revoke the worker token WORKER_ID registered with (you must be its owner, or use the admin token): its
    workers get no more jobs, and what they run is requeued."""

    def go() -> None:
        with _client(server, token) as client:
            client.revoke_worker(worker_id)
        out.print(f"revoked the token of worker {worker_id}; its jobs were requeued")

    _run(go)


@app.command()
def download(
    job_id: str,
    dest: Annotated[Path, typer.Option(help="Folder to write the checkpoints to")] = Path("."),
    attempt: Annotated[int | None, typer.Option(help="Which attempt (default: the latest with artifacts)")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Download a job's checkpoints and files through short-lived links."""

    def go() -> None:
        with _client(server, token) as client:
            items = client.artifacts(job_id)
            if not items:
                raise SubmitError(f"job {job_id} has no artifacts (yet); see `twinkle-submit status {job_id}`")
            chosen = attempt if attempt is not None else max(int(i["attempt"]) for i in items)
            items = [i for i in items if int(i["attempt"]) == chosen]
            if not items:
                raise SubmitError(f"attempt {chosen} of job {job_id} has no artifacts")
            root = dest.resolve()
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          console=err) as progress:
                total = sum(int(i.get("size") or 0) for i in items)
                task = progress.add_task(f"job {job_id} attempt {chosen}", total=total)
                for item in items:
                    rel = PurePosixPath(item["path"])
                    if rel.is_absolute() or ".." in rel.parts:
                        raise SubmitError(f"refusing artifact path {item['path']!r}")
                    client.download(item["url"], root / rel, lambda n: progress.advance(task, n))
        out.print(f"{len(items)} files of attempt {chosen} in {root}", markup=False)

    _run(go)


@app.command()
def inspect(script: Path, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """What the scheduler reads from SCRIPT (its DeviceGroups), without running it."""

    def go() -> None:
        if not script.is_file() or script.suffix != ".py":
            raise BundleError(f"{script} is not a Python script: inspect reads a .py file")
        with _client(server, token) as client:
            result = client.inspect(script.read_bytes(), script.name)
        groups = result.get("request", {}).get("device_groups") or []
        table = Table("group", "ranks", "device type", "min memory (GB)", box=None)
        for g in groups:
            table.add_row(str(g.get("name")), str(g.get("ranks")), str(g.get("device_type")),
                          "" if g.get("min_memory_gb") is None else str(g.get("min_memory_gb")))
        out.print(table if groups else "no DeviceGroups declared; the job asks for the default (1 rank)")
        for warning in result.get("warnings") or []:
            err.print(f"warning: {warning}", markup=False)

    _run(go)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # `twinkle-submit train.py ...` means `twinkle-submit submit train.py ...`
    if args and args[0] not in COMMANDS and args[0] not in ("--help", "-h"):
        args.insert(0, "submit")
    app(args=args, prog_name="twinkle-submit")


if __name__ == "__main__":
    main()
