"""``twinkle-submit``: submit twinkle training scripts to a Twinkle Commons platform and follow them.

``twinkle-submit train.py`` is ``twinkle-submit submit train.py``. Then ``status``, ``logs -f``, ``open``,
``metrics``, ``download``, ``rerun`` and ``cancel`` take the job id it prints.
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

from submit import display
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
COMMANDS = {
    "submit", "list", "status", "logs", "cancel", "download", "inspect", "rerun", "open", "metrics", "workers",
    "revoke-worker",
}
EnvOpt = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="NAME=VALUE for the script's environment; repeat it for more"),
]
ArgOpt = Annotated[
    list[str] | None,
    typer.Option("--arg", help="One argument for the script (python SCRIPT ARG...); repeat it, in order"),
]


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


def _env(items: list[str] | None) -> dict[str, str]:
    try:
        return display.parse_env(items or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _submitted(client: Client, job: dict, note: str) -> None:
    """What a new job's owner needs next: its id, its page, where it stands, the commands to follow it."""
    job_id = job["id"]
    out.print(f"submitted job [bold]{job_id}[/] {note}")
    out.print(f"  page:   {client.web_url(job_id)}", markup=False)
    where = display.phase(job)
    if job.get("queue_position") is not None:
        where += f", place {job['queue_position']} in the queue"
    if job.get("expected_start_at"):
        where += f", expected to start {display.eta(job)} (estimate)"
    out.print(f"  state:  {where}", markup=False)
    if job.get("pending_reason"):
        out.print(f"  why:    {job['pending_reason']}", markup=False, soft_wrap=True)
    out.print(f"  next:   twinkle-submit logs -f {job_id}   |   twinkle-submit status {job_id}   |   "
              f"twinkle-submit open {job_id}", markup=False, soft_wrap=True)


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
    env: EnvOpt = None,
    arg: ArgOpt = None,
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
    """Bundle SCRIPT's folder, submit it as a job, print its id, page and place in the queue.

    Example: twinkle-submit train.py --env LR=1e-4 --arg --epochs --arg 3 -f
    """
    result: dict = {}
    job_env = _env(env)

    def go() -> None:
        bundle = make_bundle(script, max_mb=max_bundle_mb)
        with _client(server, token) as client:
            request = _request_from_flags(client, script, ranks, device_type, gpu_memory)
            job = client.submit(bundle.data, bundle.entrypoint, name=name or script.stem, request=request,
                                allow_unsandboxed=allow_unsandboxed, env=job_env, args=list(arg or []),
                                launcher=launcher.value if launcher is not None else None)
            job_id = job["id"]
            for warning in job.get("warnings") or []:
                err.print(f"warning: {warning}", markup=False, soft_wrap=True)
            if allow_unsandboxed:
                err.print("note: --allow-unsandboxed: this job may run on a worker that does not isolate it; use it "
                          "only with a pool you trust", markup=False, soft_wrap=True)
            launched = job.get("request", {}).get("launcher", "python")
            size = f"{len(bundle.files)} files, {bundle.size / 1024:.0f} KB"
            _submitted(client, job, f"({size}, launched with {launched})")
            if follow:
                result["state"] = _follow(client, job_id)

    _run(go)
    if follow and result.get("state") != "succeeded":
        raise typer.Exit(1)


@app.command("list")
def list_jobs(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state (queued, running, succeeded, ...)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the page as JSON (the API's job objects)")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Your jobs, newest first: state, worker, run time, place in the queue or expected start, and why it waits
    or failed. Times are in your local zone."""

    def go() -> None:
        with _client(server, token) as client:
            page = client.list_jobs(state=state, limit=limit)
        if as_json:
            print(json.dumps(page, indent=2))
            return
        table = Table("id", "name", "state", "worker", "created", "duration", "queue", "reason", box=None)
        for job in page.get("items", []):
            pos = job.get("queue_position")
            queue = "" if pos is None else f"#{pos}" + (f" {display.eta(job)}" if job.get("expected_start_at") else "")
            table.add_row(str(job.get("id")), str(job.get("name") or ""), display.phase(job),
                          str(job.get("worker_name") or ""), display.local_time(job.get("created_at")),
                          display.duration(job.get("duration_s")), queue, display.reason(job, 60))
        out.print(table)
        out.print(f"{len(page.get('items', []))} of {page.get('total', '?')} jobs")

    _run(go)


@app.command()
def status(job_id: str, server: ServerOpt = None, token: TokenOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the raw job")] = False) -> None:
    """A job's state, why it failed (first), place in the queue, expected start and attempts; local-zone times."""

    def go() -> None:
        with _client(server, token) as client:
            job = client.job(job_id)
            url = client.web_url(job_id)
        if as_json:
            print(json.dumps(job, indent=2))
            return
        out.print(f"job {job.get('id')}  [bold]{display.phase(job)}[/]  {job.get('name') or ''}")
        failure = job.get("failure")
        if failure:
            err.print(f"failed (attempt {failure.get('attempt')}): {failure.get('summary')}", markup=False,
                      soft_wrap=True)
            for line in failure.get("stderr_tail") or []:
                err.print(f"  | {line}", markup=False, soft_wrap=True)
        if job.get("queue_position") is not None:
            out.print(f"place in the queue: {job['queue_position']}")
        if job.get("expected_start_at"):
            out.print(f"expected to start: {display.local_time(job['expected_start_at'])} (estimate)", markup=False)
        if job.get("pending_reason"):
            out.print(f"pending: {job['pending_reason']}", markup=False)
        facts = [("created", display.local_time(job.get("created_at"))),
                 ("started", display.local_time(job.get("started_at"))),
                 ("ended", display.local_time(job.get("ended_at"))),
                 ("duration", display.duration(job.get("duration_s"))),
                 ("worker", job.get("worker_name") or ""),
                 ("env", " ".join(f"{k}={v}" for k, v in (job.get("env") or {}).items())),
                 ("args", " ".join(job.get("args") or [])), ("rerun of", job.get("resubmitted_from") or ""),
                 ("page", url)]
        for label, value in facts:
            if value:
                out.print(f"{label + ':':<10}{value}", markup=False, soft_wrap=True)
        attempts = job.get("attempts") or []
        if attempts:
            table = Table("attempt", "worker", "state", "started", "ended", "exit", "error", box=None)
            for a in attempts:
                worker = str(a.get("worker_name") or a.get("worker_id") or "")
                table.add_row(str(a.get("n")), worker, str(a.get("state")),
                              display.local_time(a.get("started_at")), display.local_time(a.get("ended_at")),
                              "" if a.get("exit_code") is None else str(a.get("exit_code")),
                              (a.get("error") or "").splitlines()[0][:80] if a.get("error") else "")
            out.print(table)

    _run(go)


@app.command()
def logs(job_id: str, follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends")] = False,
         timestamps: Annotated[
             bool, typer.Option("--timestamps", "-t", help="Start each line with its UTC time")] = False,
         server: ServerOpt = None, token: TokenOpt = None) -> None:
    """A job's log (all attempts); with -f, stream it live until the job ends."""

    def go() -> None:
        with _client(server, token) as client:
            if follow:
                _follow(client, job_id)
            else:
                sys.stdout.write(client.logs(job_id, timestamps=timestamps))

    _run(go)


@app.command()
def cancel(job_id: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Cancel a queued or running job."""

    def go() -> None:
        with _client(server, token) as client:
            job = client.cancel(job_id)
        word = display.phase(job)
        out.print(f"job {job_id}: {word}" + (" (the worker stops it; `twinkle-submit status` shows when it has)"
                                              if word == "stopping…" else ""), markup=False)

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
    as_zip: Annotated[
        bool, typer.Option("--zip", help="One zip file (streamed by the server) instead of files")] = False,
    folder: Annotated[
        str | None, typer.Option(help="Only this folder, e.g. output/last-checkpoint (default: every file)")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Download a job's checkpoints and files (or with --zip one zip of them), and say where they landed."""

    def go() -> None:
        if as_zip:
            with _client(server, token) as client, Progress(
                TextColumn("{task.description}"), DownloadColumn(), TransferSpeedColumn(), console=err
            ) as progress:
                task = progress.add_task(f"job {job_id} zip", total=None)
                path = client.download_zip(job_id, dest.resolve(), attempt=attempt, folder=folder,
                                           on_bytes=lambda n: progress.advance(task, n))
            out.print(f"saved {path}", markup=False)
            return
        with _client(server, token) as client:
            items = client.artifacts(job_id)
            if not items:
                raise SubmitError(f"job {job_id} has no artifacts (yet); see `twinkle-submit status {job_id}`")
            chosen = attempt if attempt is not None else max(int(i["attempt"]) for i in items)
            items = [i for i in items if int(i["attempt"]) == chosen]
            if folder:
                items = [i for i in items if str(i["path"]).startswith(folder.strip("/") + "/")]
            if not items:
                raise SubmitError(f"attempt {chosen} of job {job_id} has no artifacts"
                                  + (f" under {folder}" if folder else ""))
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
        out.print(f"{len(items)} files of attempt {chosen} in:", markup=False)
        for where in display.landed(i["path"] for i in items):
            out.print(f"  {root / where}", markup=False)

    _run(go)


@app.command()
def rerun(
    job_id: str,
    env: EnvOpt = None,
    arg: ArgOpt = None,
    no_args: Annotated[bool, typer.Option("--no-args", help="Run without the original's arguments")] = False,
    name: Annotated[str | None, typer.Option(help="A name for the new job (default: the original's)")] = None,
    ranks: Annotated[int | None, typer.Option(min=1, help="Ranks of the (first) DeviceGroup")] = None,
    device_type: Annotated[str | None, typer.Option(help="cuda, cpu, npu, ...")] = None,
    gpu_memory: Annotated[str | None, typer.Option(help="Minimum memory per device, e.g. 24GB")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the logs until the job ends")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Run JOB_ID's bundle again as a new job. --env adds to (or changes) the original's variables, --arg
    replaces its arguments; everything not given stays as it was.

    Example: twinkle-submit rerun 3f2a... --env MAX_STEPS=200
    """
    changes = _env(env)
    result: dict = {}

    def go() -> None:
        with _client(server, token) as client:
            original = client.job(job_id)
            new_env = {**(original.get("env") or {}), **changes} if changes else None
            new_args = [] if no_args else (list(arg) if arg else None)
            request = None
            if ranks is not None or device_type is not None or gpu_memory is not None:
                groups = [dict(g) for g in (original.get("request") or {}).get("device_groups") or []] or [
                    {"name": "default", "ranks": 1, "device_type": "any", "min_memory_gb": 0.0}]
                if ranks is not None:
                    groups[0]["ranks"] = ranks
                if device_type is not None:
                    groups[0]["device_type"] = device_type
                if gpu_memory is not None:
                    groups[0]["min_memory_gb"] = parse_memory_gb(gpu_memory)
                request = {"device_groups": groups,
                           "allow_unsandboxed": bool((original.get("request") or {}).get("allow_unsandboxed"))}
            job = client.resubmit(job_id, name=name, env=new_env, args=new_args, request=request)
            _submitted(client, job, f"(a rerun of {job_id})")
            if follow:
                result["state"] = _follow(client, job["id"])

    _run(go)
    if follow and result.get("state") != "succeeded":
        raise typer.Exit(1)


@app.command("open")
def open_page(job_id: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Open the job's page in a browser (prints the address when there is no browser, e.g. over SSH)."""
    import webbrowser

    url, _ = resolve_connection(server, token, need_token=False)
    page = Client(url, None).web_url(job_id)
    out.print(page, markup=False)
    try:
        opened = webbrowser.open(page)
    except webbrowser.Error:
        opened = False
    if not opened:
        err.print("no browser here: open the address above on your machine", markup=False)


@app.command()
def metrics(
    job_id: str,
    as_csv: Annotated[bool, typer.Option("--csv", help="Every record as CSV (attempt,step,ts,<metrics>)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Every record as JSON")] = False,
    system: Annotated[bool, typer.Option("--system", help="Include the worker's sys/ samples in the table")] = False,
    series: Annotated[
        str, typer.Option(help="With --csv/--json: all, training (the script's records) or system (sys/ samples)")
    ] = "all",
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """A job's metrics: by default the latest value of each; --csv or --json for every record (to plot or
    forward elsewhere). "step" is the optimizer step."""

    def go() -> None:
        with _client(server, token) as client:
            if as_csv:
                sys.stdout.write(client.metrics_csv(job_id, series))
                return
            records = client.metrics(job_id, series if as_json else "all")
        if as_json:
            print(json.dumps(records, indent=2))
            return
        latest: dict[str, tuple[int, object]] = {}
        for r in records:
            for key, value in (r.get("metrics") or {}).items():
                if system or not key.startswith("sys/"):
                    latest[key] = (int(r.get("step") or 0), value)
        if not latest:
            out.print(f"job {job_id} has reported no metrics (yet)", markup=False)
            return
        table = Table("metric", "latest", "at step", box=None)
        for key in sorted(latest):
            step, value = latest[key]
            table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value), str(step))
        out.print(table)

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
