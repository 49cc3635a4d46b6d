"""What the worker does with an assignment it claimed: start it, fetch the bundle, run it, report.

An assignment is ``(job_id, attempt)``, nothing more; running one is idempotent because
``POST /attempts/{job}/{n}/start`` answers 409 to a second start (a claim handed out twice runs once).
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import sys
import threading
import zipfile
from pathlib import Path, PurePosixPath

from contract.archive import DEFAULT_LIMITS, ArchiveLimits, ArchiveRejected, extract
from contract.attempts import JOB_ENV_NAMES
from worker.client import Conflict, NotFound, StaleAttempt, WorkerAPIError, WorkerClient
from worker.launch import attempt_devices, plan_launch
from worker.leftovers import ProcessGroupLedger
from worker.outbox import Outbox, deliver_leftovers
from worker.runner import JobRunner, JobSpec, RunResult, StaleAttemptSignal
from worker.sandbox import Sandbox
from worker.settings import WorkerSettings

__all__ = [
    "AttemptExecutor", "BundleError", "ClientSink", "latest_checkpoint", "platform_env", "unpack_bundle",
]

log = logging.getLogger(__name__)



def _free_port() -> int:
    """A port free on this machine now (for a Ray head; inside bwrap any port is, in the job's own network)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BundleError(Exception):
    """The bundle cannot be unpacked safely (bad zip, a path escaping the folder)."""


def unpack_bundle(bundle: Path, dest: Path, entrypoint: str, limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
    """Unpack a zip bundle into ``dest`` under the API's bundle rules (``contract.archive``: sizes, file count,
    compression ratio, no links or special files, and only if it fits on the disk); a bare script (a ``.py``
    upload) is written as the entrypoint."""
    dest.mkdir(parents=True, exist_ok=True)
    if not zipfile.is_zipfile(bundle):
        target = dest / PurePosixPath(entrypoint).name
        shutil.copyfile(bundle, target)
        return
    try:
        extract(bundle, dest, limits)
    except ArchiveRejected as exc:
        raise BundleError(f"the bundle breaks the rule {exc.rule}: {exc.message}") from exc


def latest_checkpoint(paths: list[str]) -> str | None:
    """The checkpoint folder (``output/<name>``) to resume from: the highest trailing step number wins,
    then a name containing ``last``; ``None`` when no file sits in a folder under ``output/``."""
    folders = {PurePosixPath(p).parts[1] for p in paths if len(PurePosixPath(p).parts) > 2}
    if not folders:
        return None

    def rank(name: str) -> tuple[int, int, str]:
        m = re.search(r"(\d+)$", name)
        return (int(m.group(1)) if m else -1, 1 if "last" in name else 0, name)

    return "output/" + max(folders, key=rank)


def platform_env(env: object) -> dict[str, str]:
    """The job environment the API asked for at ``start``, limited to ``contract.attempts.JOB_ENV_NAMES`` (twinkle's
    deterministic mode and its stop after k steps): nothing else, whatever the answer held."""
    if not isinstance(env, dict):
        return {}
    return {k: str(v) for k, v in env.items() if k in JOB_ENV_NAMES and isinstance(v, (str, int))}


class ClientSink:
    """Sends the runner's output to the API through the attempt's disk outbox (``worker.outbox``): a put never
    blocks on the API and survives its outages; a 409 ``stale_attempt`` stops the job."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def send_logs(self, lines: list[dict]) -> None:
        self.outbox.put_logs(lines)

    def send_metrics(self, records: list[dict]) -> None:
        self.outbox.put_metrics(records)

    def send_artifact(self, path: str, file: Path) -> None:
        self.outbox.put_artifact(path, file)


class AttemptExecutor:
    """Runs assignments for one worker and knows which attempts are running (for heartbeats and cancels)."""

    def __init__(
        self,
        client: WorkerClient,
        settings: WorkerSettings,
        cuda_visible_devices: str | None = None,
        ledger: ProcessGroupLedger | None = None,
        sandbox: Sandbox | None = None,
        ranks: int = 1,
    ):
        """``cuda_visible_devices``: the worker's GPUs (its offered group's device ``i`` is the i-th of them);
        ``ranks``: the devices it offers (what an attempt gets from an API that names none)."""
        self.client, self.settings = client, settings
        self.ranks = ranks
        self.sandbox = sandbox  # None: no sandbox (unit tests); the daemon passes the one its settings chose
        self.cuda_visible_devices = cuda_visible_devices
        self.ledger = ledger
        self._running: dict[tuple[str, int], JobRunner] = {}
        self._cancelled: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._closing = False

    def running(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._running)

    def cancel(self, job_id: str, attempt: int) -> bool:
        """Cancel a running attempt (or one whose task has not started yet). True if it was running here."""
        key = (job_id, attempt)
        with self._lock:
            self._cancelled.add(key)
            runner = self._running.get(key)
        if runner is not None:
            log.info("cancelling job %s attempt %s", job_id, attempt)
            runner.cancel()
        return runner is not None

    def abandon_all(self) -> None:
        """The daemon is stopping: stop every job without reporting it (the lease reaper requeues them)."""
        with self._lock:
            self._closing = True
            runners = list(self._running.values())
        for runner in runners:
            runner.abandon()

    def run_attempt(self, job_id: str, attempt: int) -> RunResult | None:
        key = (job_id, attempt)
        with self._lock:
            if self._closing or key in self._cancelled or key in self._running:
                log.info("skipping job %s attempt %s (cancelled, running or shutting down)", job_id, attempt)
                return None
        try:
            started = self.client.start(job_id, attempt)
        except (Conflict, NotFound) as exc:
            # already started, superseded by a newer attempt, or cancelled: a duplicate delivery, not an error
            log.info("not running job %s attempt %s: %s", job_id, attempt, exc)
            return None
        folder = self.settings.work_dir.resolve() / "jobs" / job_id / str(attempt)
        outbox = Outbox(self.client, job_id, attempt, self.outbox_root / f"{job_id}-{attempt}")
        try:
            return self._run_started(job_id, attempt, started, folder, outbox)
        finally:
            with self._lock:
                self._running.pop(key, None)
            drained = outbox.pending == 0
            outbox.close(remove=drained)  # an undelivered outbox stays for deliver_leftovers after a restart
            if not self.settings.keep_job_dirs and drained:
                shutil.rmtree(folder, ignore_errors=True)
                shutil.rmtree(folder.with_name(f"{folder.name}.markers"), ignore_errors=True)
                shutil.rmtree(folder.with_name(folder.name + ".worker"), ignore_errors=True)  # JobSpec.private_dir

    @property
    def outbox_root(self) -> Path:
        return self.settings.work_dir.resolve() / "outbox"

    def deliver_leftovers(self, timeout_s: float | None = None) -> int:
        """Deliver the reports an earlier run of the daemon left on disk (call before registering again)."""
        return deliver_leftovers(self.client, self.outbox_root, timeout_s=timeout_s)

    def _run_started(self, job_id: str, attempt: int, started: dict, folder: Path, outbox: Outbox) -> RunResult | None:
        entrypoint = started.get("entrypoint") or "train.py"
        if folder.exists():  # a fresh folder: never mix files of an earlier run of this attempt
            shutil.rmtree(folder)
        gpus = [g for g in (self.cuda_visible_devices or "").split(",") if g.strip()]
        given = [
            # the offered group's device i is the worker's i-th GPU
            {**g, "devices": [int(gpus[d]) if d < len(gpus) and gpus[d].isdigit() else d for d in g["devices"]]}
            if str(g.get("device_type", "")).lower() in ("cuda", "gpu") else g
            for g in started.get("devices") or []
        ]
        devices = attempt_devices(given, [int(g) for g in gpus if g.isdigit()], self.ranks)
        launcher = started.get("launcher") or "python"
        args = [str(a) for a in started.get("args") or []]
        launch = plan_launch(
            launcher, sys.executable, entrypoint, devices, ray_port=_free_port() if launcher == "ray" else None,
            args=args,
        )
        spec = JobSpec.in_folder(
            job_id,
            attempt,
            folder,
            entrypoint,
            cuda_visible_devices=launch.env.get("CUDA_VISIBLE_DEVICES"),
            assets_dir=self.settings.assets_dir,
            extra_env=platform_env(started.get("env")),
            launch=launch,
            user_env={str(k): str(v) for k, v in (started.get("user_env") or {}).items()},
            args=args,
        )
        sink = ClientSink(outbox)
        runner = JobRunner(
            spec,
            sink,
            kill_grace_s=self.settings.kill_grace_s,
            flush_interval_s=self.settings.log_flush_interval_s,
            batch_lines=self.settings.log_batch_lines,
            max_line_chars=self.settings.max_log_line_chars,
            ledger=self.ledger,
            sandbox=self.sandbox,
            limits=self.settings.limits().share(devices.count, self.ranks),
            sys_sample_s=self.settings.sys_sample_s,
        )
        with self._lock:
            self._running[(job_id, attempt)] = runner
            if (job_id, attempt) in self._cancelled:
                runner.cancel()
        try:
            spec.code_dir.mkdir(parents=True)
            bundle = self.client.download_bundle(job_id, attempt, folder / "bundle.zip")
            unpack_bundle(bundle, spec.code_dir, entrypoint)
            bundle.unlink()
            spec.resume_from = self._fetch_resume(started.get("resume_from"), folder / "resume")
        except StaleAttempt:
            log.warning("job %s attempt %s went stale before it ran", job_id, attempt)
            return RunResult("stale", None)
        except (BundleError, zipfile.BadZipFile, WorkerAPIError, OSError) as exc:
            return self._finish(outbox, RunResult("failed", None, f"could not fetch the bundle: {exc}"))
        result = runner.run()
        if result.state in ("stale", "abandoned"):
            log.warning("job %s attempt %s ended %s; not reporting it", job_id, attempt, result.state)
            return result
        return self._finish(outbox, result)

    def _fetch_resume(self, resume: dict | None, dest: Path) -> Path | None:
        """Download the latest checkpoint folder of an earlier attempt; the job gets it as TWINKLE_RESUME_FROM."""
        if not resume or not resume.get("files"):
            return None
        files = resume["files"]
        # The platform names the checkpoint (the folder it recorded last); a folder's name never decides, so a
        # made-up "checkpoint-999999" is not picked. Only an API older than that field leaves the choice to us.
        chosen = resume.get("checkpoint") or latest_checkpoint([f["path"] for f in files])
        if chosen is None:
            return None
        if PurePosixPath(chosen).parent != PurePosixPath("output") or chosen in ("output/.", "output/.."):
            raise BundleError(f"resume checkpoint {chosen!r} is not a folder under output/")
        root = dest.resolve()
        for f in files:
            if not f["path"].startswith(chosen + "/"):
                continue
            target = (root / f["path"]).resolve()
            if not target.is_relative_to(root):
                raise BundleError(f"resume file {f['path']!r} points outside the job folder")
            self.client.download_url(f["url"], target)
        log.info("resuming from %s of attempt %s", chosen, resume.get("attempt"))
        return root / chosen

    def _finish(self, outbox: Outbox, result: RunResult) -> RunResult:
        """Queue the end behind every log line and checkpoint, and wait until the API has it all: through an
        outage of any length the job stays "running" here (and in our heartbeats) until it is delivered."""
        job_id, attempt = outbox.job_id, outbox.attempt
        try:
            outbox.put_finish(result.state, result.exit_code, result.error, result.limit)
        except StaleAttemptSignal:
            outbox_stale = True
        else:
            outbox.wait_drained()
            outbox_stale = outbox.stale or outbox.finish_reply is None
        if outbox_stale:  # another attempt owns the job, or the API forgot it
            log.warning("job %s attempt %s finished but the report was refused", job_id, attempt)
            return RunResult("stale", result.exit_code, result.error)
        log.info("job %s attempt %s %s (exit code %s)", job_id, attempt, result.state, result.exit_code)
        return result
