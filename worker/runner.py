"""Where a job runs: its launch (``worker.launch``: python, torchrun or Ray) in a sandbox (``worker.sandbox``) with a
scrubbed environment.

The runner owns the child for its whole life: it streams stdout/stderr line by line to a sink in small batches
(each line with its stream and time, the attempt folder's absolute paths shown relative to it), tails the
metrics file the script appends to, samples the CPU/memory/GPU use of the job's processes (``sys/`` metrics,
``worker.sysmetrics``), writes every metric to a TensorBoard event file (``worker.tensorboard``), uploads each
checkpoint folder that appears under the output folder, and kills everything the attempt started on cancel
(SIGTERM, then SIGKILL after a grace period) or when the sink reports that a newer attempt owns the job. The
sink is the API in production and a list in unit tests.
Which sandbox runs the child (bwrap, container, none) and how its limits are kept is the sandbox's business: the
runner only hears "memory limit 8 GiB reached" back, and reports it as the attempt's error.

Several ranks: torchrun's ``[defaultN]:`` prefix becomes ``[rank N] `` on each log line; when a rank dies, torchrun
stops the others and the attempt's error names that rank, with the last lines it wrote to stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

from contract.attempts import CHECKPOINT_MARKER
from contract.jobs import RESERVED_ENV, RESERVED_ENV_PREFIX
from worker.launch import Launch, explain_failure, split_rank
from worker.leftovers import ProcessGroupLedger
from worker.sandbox import LaunchRequest, Limits, NoSandbox, Sandbox, SandboxedProcess
from worker.sysmetrics import GpuSampler, ProcessTreeSampler

__all__ = ["AttemptSink", "JobRunner", "JobSpec", "RunResult", "StaleAttemptSignal", "job_environment"]

log = logging.getLogger(__name__)

# Variables copied from the worker's own environment; everything else (tokens, storage and broker credentials,
# TWINKLE_WORKER_*, AWS_*, proxies) stays out of the untrusted script's reach.
_PASSED_THROUGH = ("PATH", "LANG")


class StaleAttemptSignal(Exception):
    """Raised by a sink when the API says another attempt owns the job (409 ``stale_attempt``)."""


class AttemptSink(Protocol):
    """Where the runner sends what the job produces. Raising ``StaleAttemptSignal`` stops the job."""

    def send_logs(self, lines: list[dict]) -> None: ...

    def send_metrics(self, records: list[dict]) -> None: ...

    def send_artifact(self, path: str, file: Path) -> None: ...


@dataclass
class JobSpec:
    """Everything the child needs; ``JobSpec.in_folder`` lays out one attempt's folder."""

    job_id: str
    attempt: int
    code_dir: Path
    entrypoint: str
    home_dir: Path
    output_dir: Path
    metrics_file: Path
    tmp_dir: Path
    python: str = sys.executable
    resume_from: Path | None = None
    cuda_visible_devices: str | None = None
    assets_dir: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    launch: Launch | None = None  # None: python <entrypoint> <args>
    args: list[str] = field(default_factory=list)  # the job's own: python ENTRYPOINT ARGS...
    user_env: dict[str, str] = field(default_factory=dict)  # the job's own variables; the platform's win
    private_dir: Path | None = None  # the worker's own files for the attempt, outside the job's reach

    @classmethod
    def in_folder(cls, job_id: str, attempt: int, folder: Path, entrypoint: str, **kwargs) -> JobSpec:
        """``folder/code`` (the unpacked bundle, the cwd), ``output/``, ``metrics.jsonl``, ``tmp/``; HOME is
        ``folder``; the worker's own files go to the sibling ``<folder>.worker`` (not shown to the sandbox)."""
        kwargs.setdefault("private_dir", folder.with_name(folder.name + ".worker"))
        return cls(
            job_id=job_id,
            attempt=attempt,
            code_dir=folder / "code",
            entrypoint=entrypoint,
            home_dir=folder,
            output_dir=folder / "output",
            metrics_file=folder / "metrics.jsonl",
            tmp_dir=folder / "tmp",
            **kwargs,
        )


def job_environment(spec: JobSpec, parent_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's whole environment: a short allow-list, the job's own variables (``spec.user_env``; names the
    platform reserves are dropped even if the API let one through), then the ``TWINKLE_*`` job contract, which
    always wins."""
    parent = os.environ if parent_env is None else parent_env
    env = {k: parent[k] for k in _PASSED_THROUGH if k in parent}
    for name, value in spec.user_env.items():
        if name.upper().startswith(RESERVED_ENV_PREFIX) or name.upper() in RESERVED_ENV or "\x00" in name + value:
            log.warning("job %s: ignoring its variable %s (reserved by the platform)", spec.job_id, name[:64])
            continue
        env[name] = value
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        HOME=str(spec.home_dir),
        TMPDIR=str(spec.tmp_dir),
        PYTHONUNBUFFERED="1",
        TWINKLE_JOB_ID=spec.job_id,
        TWINKLE_ATTEMPT=str(spec.attempt),
        TWINKLE_OUTPUT_DIR=str(spec.output_dir),
        TWINKLE_METRICS_FILE=str(spec.metrics_file),
    )
    if spec.cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.cuda_visible_devices
    if spec.assets_dir:
        env["TWINKLE_ASSETS_DIR"] = spec.assets_dir
    if spec.resume_from is not None:
        env["TWINKLE_RESUME_FROM"] = str(spec.resume_from)
    if spec.launch is not None:
        env.update(spec.launch.env)
    env.update(spec.extra_env)
    return env


@dataclass
class RunResult:
    """How the attempt ended. ``stale``: a newer attempt owns the job; ``abandoned``: the worker is shutting down."""

    state: Literal["succeeded", "failed", "cancelled", "stale", "abandoned"]
    exit_code: int | None
    error: str | None = None
    limit: str | None = None  # the worker limit that stopped the attempt (memory, time, disk, processes)


def _gpu_indices(cuda_visible_devices: str | None) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``: the GPUs whose device nodes the sandbox shows the attempt."""
    if not cuda_visible_devices:
        return []
    return [int(x) for x in cuda_visible_devices.split(",") if x.strip().isdigit()]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _is_temporary(name: str) -> bool:
    # model.save writes a temp folder and renames it into place; only the final name is a checkpoint
    return name.startswith(".") or name.endswith((".tmp", ".partial", ".incomplete")) or ".tmp" in name


class _OutputWatcher:
    """Uploads files under the output folder, each once per (size, mtime) it was seen with; after a checkpoint
    folder's files, its completion marker (``contract.attempts.CHECKPOINT_MARKER``) listing them, written to
    ``marker_dir`` (outside the sandbox's reach) and uploaded behind them."""

    def __init__(self, root: Path, upload, marker_dir: Path | None = None):
        self.root, self._upload, self.marker_dir = root, upload, marker_dir
        self._sent: dict[str, tuple[int, int]] = {}
        self._folders: dict[str, int] = {}
        self._seen: dict[str, int] = {}  # what the last walk found: path under root -> size
        self._marked: dict[str, dict[str, int]] = {}
        self._markers_written = 0  # each marker its own file: a queued upload reads its file when it is sent

    def _mark(self, folder: str) -> None:
        """Queue the folder's marker (after its files: the outbox delivers in order) if its files changed."""
        if self.marker_dir is None:
            return
        prefix = folder + "/"
        files = {rel[len(prefix):]: size for rel, size in self._seen.items() if rel.startswith(prefix)}
        if not files or self._marked.get(folder) == files:
            return
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        self._markers_written += 1
        path = self.marker_dir / f"{self._markers_written}-{folder}.json"
        path.write_text(json.dumps({"files": files}, sort_keys=True))
        self._upload(f"output/{folder}/{CHECKPOINT_MARKER}", path)
        self._marked[folder] = files

    def _sync_tree(self, base: Path) -> int:
        count = 0
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not _is_temporary(d))
            for name in sorted(filenames):
                if _is_temporary(name):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:  # replaced while we walked; the next pass sees the new one
                    continue
                rel = path.relative_to(self.root).as_posix()
                self._seen[rel] = st.st_size
                sig = (st.st_size, st.st_mtime_ns)
                if self._sent.get(rel) == sig:
                    continue
                self._upload("output/" + rel, path)
                self._sent[rel] = sig
                count += 1
        return count

    def scan_new_folders(self) -> int:
        """Upload each top-level folder that appeared (or was replaced) since the last scan."""
        if not self.root.is_dir():
            return 0
        count = 0
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.is_dir(follow_symlinks=False) or _is_temporary(entry.name):
                continue
            ino = entry.inode()
            if self._folders.get(entry.name) == ino:
                continue
            self._seen = {}
            count += self._sync_tree(Path(entry.path))
            self._mark(entry.name)
            self._folders[entry.name] = ino
        return count

    def final_sync(self) -> int:
        """Everything new or changed, top-level files included; a marker for each folder whose files changed."""
        if not self.root.is_dir():
            return 0
        self._seen = {}
        count = self._sync_tree(self.root)
        for folder in sorted({rel.split("/", 1)[0] for rel in self._seen if "/" in rel}):
            self._mark(folder)
        return count


class _MetricsTail:
    """Reads complete JSON lines appended to the metrics file since the last read."""

    def __init__(self, path: Path):
        self.path, self._offset, self._partial, self._seen = path, 0, b"", 0

    def read(self) -> tuple[list[dict], list[str]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return [], []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        records, problems = [], []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or not isinstance(rec.get("metrics"), dict):
                    raise ValueError("expected an object with a 'metrics' object")
                step = rec.get("step")
                self._seen += 1
                records.append(
                    {
                        # the API wants an int step; a record without one is numbered by arrival
                        "step": int(step) if step is not None else self._seen,
                        "ts": float(rec.get("ts") or time.time()),
                        "metrics": rec["metrics"],
                    }
                )
            except (ValueError, TypeError) as exc:
                problems.append(f"ignored a metrics line ({exc}): {raw[:200]!r}")
        return records, problems



class _PathRewriter:
    """Shows the attempt folder's absolute paths (the worker's own layout) relative to it: ``/var/lib/twinkle/
    jobs/J/1/output/x`` becomes ``output/x``, the folder itself ``.``."""

    def __init__(self, folder: Path):
        forms = {str(folder), str(folder.resolve())} if folder.is_absolute() else {str(folder.resolve())}
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form + "/", "").replace(form, ".")
        return text


def _as_terminal_shows(line: str) -> str:
    """The text a terminal would leave on screen: progress bars (tqdm) redraw with ``\\r`` inside one line,
    and only the last non-empty redraw is worth a log line."""
    line = line.rstrip("\r\n")
    if "\r" in line:
        line = next((part for part in reversed(line.split("\r")) if part.strip()), "")
    return line

class JobRunner:
    """Runs one attempt to its end. ``run()`` blocks; ``cancel()`` and ``abandon()`` may be called from any thread."""

    def __init__(
        self,
        spec: JobSpec,
        sink: AttemptSink,
        *,
        kill_grace_s: float = 10.0,
        flush_interval_s: float = 0.5,
        batch_lines: int = 200,
        max_line_chars: int = 8192,
        checkpoint_poll_s: float = 1.0,
        stderr_tail_lines: int = 20,
        parent_env: Mapping[str, str] | None = None,
        ledger: ProcessGroupLedger | None = None,
        sandbox: Sandbox | None = None,
        limits: Limits | None = None,
        sys_sample_s: float = 5.0,
        tensorboard: bool = True,
        tensorboard_upload_s: float = 30.0,
    ):
        self.spec, self.sink = spec, sink
        self.kill_grace_s, self.flush_interval_s, self.batch_lines = kill_grace_s, flush_interval_s, batch_lines
        self.max_line_chars, self.checkpoint_poll_s = max_line_chars, checkpoint_poll_s
        self.parent_env = parent_env
        self.ledger = ledger  # records the job's process group while it runs, for a daemon restarted after SIGKILL
        # the worker picks the sandbox from its settings (bwrap by default); a bare runner (unit tests) uses none
        self.sandbox = sandbox or NoSandbox()
        self.limits = limits or Limits()
        self._lines: queue.Queue[dict] = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=stderr_tail_lines)
        self._rank_tails: dict[int, deque[str]] = {}  # torchrun: each rank's last stderr lines
        self._launcher_tail: deque[str] = deque(maxlen=80)  # torchrun's own stderr (its failure summary)
        self._tail_lines = stderr_tail_lines
        self._proc: SandboxedProcess | None = None
        self._ended = threading.Event()
        self._stop_reason: Literal["cancelled", "stale", "abandoned"] | None = None
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()
        # beside the attempt folder, not in it: the sandbox can write only inside the attempt folder
        markers = spec.home_dir.with_name(f"{spec.home_dir.name}.markers")
        self._outputs = _OutputWatcher(spec.output_dir, self._send_artifact, markers)
        self._metrics = _MetricsTail(spec.metrics_file)
        self._relative = _PathRewriter(spec.home_dir)
        self.sys_sample_s = sys_sample_s
        self.tensorboard_upload_s = tensorboard_upload_s
        self._last_step = 0  # the last optimizer step the job reported; sys/ samples are filed under it
        self._tb = None
        if tensorboard:
            try:
                from worker.tensorboard import EventWriter

                self._tb = EventWriter(spec.private_dir or spec.home_dir.with_name(spec.home_dir.name + ".worker"),
                                       spec.job_id, spec.attempt)
            except Exception as exc:  # noqa: BLE001 - no tensorboardX, a full disk: train without the event file
                log.warning("job %s: no TensorBoard event file (%s)", spec.job_id, exc)
        self.started = threading.Event()

    # ------------------------------------------------------------ control

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def cancel(self) -> None:
        """Cancelled by the user: SIGTERM the process group, SIGKILL it after the grace period."""
        self._stop("cancelled", graceful=True)

    def abandon(self) -> None:
        """The worker is going away: stop the job without reporting an end (the lease reaper requeues it)."""
        self._stop("abandoned", graceful=True)

    def _stop(self, reason: Literal["cancelled", "stale", "abandoned"], graceful: bool) -> None:
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
        if self._proc is None or self._ended.is_set():
            return
        if not graceful:
            self._killpg(signal.SIGKILL)
            return
        self._killpg(signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, daemon=True, name="runner-kill").start()

    def _kill_after_grace(self) -> None:
        if not self._ended.wait(self.kill_grace_s):
            log.info("job %s attempt %s ignored SIGTERM; sending SIGKILL", self.spec.job_id, self.spec.attempt)
            self._killpg(signal.SIGKILL)

    def _killpg(self, sig: int) -> None:
        if self._proc is None:
            return
        self._proc.signal_all(sig)  # every process of the attempt, setsid or not (how is the sandbox's business)

    # ------------------------------------------------------------ sink calls

    def _guarded(self, what: str, fn, *args) -> None:
        if self._stop_reason == "stale":
            return
        try:
            fn(*args)
        except StaleAttemptSignal:
            log.warning("job %s attempt %s is stale; killing it", self.spec.job_id, self.spec.attempt)
            self._stop("stale", graceful=False)
        except Exception as exc:  # noqa: BLE001 - a failed upload must not kill a training run
            log.error("job %s attempt %s: could not send %s: %s", self.spec.job_id, self.spec.attempt, what, exc)

    def _send_artifact(self, path: str, file: Path) -> None:
        self._guarded(f"artifact {path}", self.sink.send_artifact, path, file)

    def _flush_logs(self, batch: list[dict]) -> None:
        # the last flush drains everything the job printed at once: still post at most batch_lines per call
        for start in range(0, len(batch), self.batch_lines):
            self._guarded("logs", self.sink.send_logs, batch[start : start + self.batch_lines])
        batch.clear()

    def _flush_metrics(self, batch: list[dict]) -> None:
        records, problems = self._metrics.read()
        batch.extend(self._line("system", problem) for problem in problems)
        if records:
            self._last_step = max(self._last_step, max(int(r["step"]) for r in records))
            self._send_metrics(records)

    def _send_metrics(self, records: list[dict]) -> None:
        self._guarded("metrics", self.sink.send_metrics, records)
        if self._tb is not None:
            with self._upload_lock:
                self._tb.add(records)

    def _upload_tensorboard(self) -> None:
        """Send the event file again if scalars were added since it was last sent (the API keeps the newest)."""
        if self._tb is not None and self._tb.take_dirty():
            self._send_artifact(self._tb.artifact_path, self._tb.file)

    def _sample_system(self) -> None:
        """Every ``sys_sample_s``: CPU%/RSS of the job's process tree and its GPUs, as ``sys/`` metrics."""
        assert self._proc is not None
        tree = ProcessTreeSampler(self._proc.pid)
        gpus = GpuSampler(_gpu_indices(self.spec.cuda_visible_devices))
        try:
            tree.sample()  # the CPU baseline; the first real value comes one interval later
            while not self._ended.wait(self.sys_sample_s):
                values = {**tree.sample(), **gpus.sample()}
                if values:
                    self._send_metrics([{"step": self._last_step, "ts": time.time(), "metrics": values}])
        finally:
            gpus.close()

    # ------------------------------------------------------------ the run

    def _line(self, stream: str, text: str) -> dict:
        text = self._relative(text)
        if len(text) > self.max_line_chars:
            text = text[: self.max_line_chars] + f"... [{len(text) - self.max_line_chars} chars cut]"
        return {"ts": time.time(), "stream": stream, "text": text}

    def _read(self, pipe: IO[bytes], stream: str) -> None:
        ranked = self.spec.launch is not None and self.spec.launch.ranks > 1
        for raw in iter(pipe.readline, b""):
            text = _as_terminal_shows(raw.decode("utf-8", errors="replace"))
            if ranked:
                rank, rest = split_rank(text)
                if rank is not None:
                    text = f"[rank {rank}] {rest}"
                    if stream == "stderr":
                        self._rank_tails.setdefault(rank, deque(maxlen=self._tail_lines)).append(rest)
                elif stream == "stderr":
                    self._launcher_tail.append(text)
            if stream == "stderr":
                self._stderr_tail.append(text)
            self._lines.put(self._line(stream, text))
        pipe.close()

    def _watch_outputs(self) -> None:
        last_tb = time.monotonic()
        while not self._ended.wait(self.checkpoint_poll_s):
            with self._upload_lock:
                self._outputs.scan_new_folders()
                if time.monotonic() - last_tb >= self.tensorboard_upload_s:
                    self._upload_tensorboard()
                    last_tb = time.monotonic()

    def _spawn(self) -> SandboxedProcess:
        spec = self.spec
        for folder in (spec.output_dir, spec.tmp_dir, spec.home_dir):
            folder.mkdir(parents=True, exist_ok=True)
        env = job_environment(spec, self.parent_env)
        return self.sandbox.launch(
            LaunchRequest(
                argv=spec.launch.argv if spec.launch is not None else [spec.python, spec.entrypoint, *spec.args],
                python=spec.python,
                cwd=spec.code_dir,
                env=env,
                attempt_dir=spec.home_dir,
                tmp_dir=spec.tmp_dir,
                read_only=[Path(spec.assets_dir)] if spec.assets_dir else [],
                gpus=_gpu_indices(env.get("CUDA_VISIBLE_DEVICES")),
                limits=self.limits,
                label=f"job {spec.job_id} attempt {spec.attempt}",
            )
        )

    def run(self) -> RunResult:
        spec = self.spec
        entry = spec.code_dir / spec.entrypoint
        if not entry.is_file():
            return RunResult("failed", None, f"entrypoint {spec.entrypoint!r} is not in the bundle")
        with self._lock:
            if self._stop_reason is not None:  # cancelled before it started
                return RunResult(self._stop_reason, None, "stopped before the job started")
            self._proc = self._spawn()
        if self.ledger is not None:
            self.ledger.add(self._proc.pid, f"job {spec.job_id} attempt {spec.attempt}")
        self.started.set()
        how = spec.launch.describe if spec.launch is not None else f"python {spec.entrypoint}"
        started = (
            f"attempt {spec.attempt}: {how} "
            f"(pid {self._proc.pid}, isolation {self.sandbox.isolation}; limits: {self.limits.describe()})"
        )
        self._lines.put(self._line("system", started))
        readers = [
            threading.Thread(target=self._read, args=(self._proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self._proc.stderr, "stderr"), daemon=True),
        ]
        watcher = threading.Thread(target=self._watch_outputs, daemon=True, name="runner-outputs")
        sampler = threading.Thread(target=self._sample_system, daemon=True, name="runner-sys")
        for t in (*readers, watcher, sampler):
            t.start()

        batch: list[dict] = []
        last_flush = time.monotonic()
        leader_exit: float | None = None
        while True:
            timeout = max(0.0, self.flush_interval_s - (time.monotonic() - last_flush))
            with contextlib.suppress(queue.Empty):
                batch.append(self._lines.get(timeout=timeout))
            exited = self._proc.poll() is not None
            if exited and leader_exit is None:
                leader_exit = time.monotonic()
            # a grandchild that left the group (setsid) could hold a pipe open forever: give up on it after 5 s
            done = leader_exit is not None and (
                not any(t.is_alive() for t in readers) or time.monotonic() - leader_exit > 5
            )
            if len(batch) >= self.batch_lines or time.monotonic() - last_flush >= self.flush_interval_s or done:
                if done:
                    while not self._lines.empty():
                        batch.append(self._lines.get_nowait())
                self._flush_metrics(batch)
                self._flush_logs(batch)
                last_flush = time.monotonic()
            if done:
                break
            if exited:
                # the leader exited; leftovers in its group would hold the pipes open forever
                self._killpg(signal.SIGKILL)

        self._proc.wait()
        self._ended.set()
        watcher.join()
        sampler.join()
        self._proc.close()  # kills whatever is left and stops the limit watcher (which may name a limit now)
        returncode = self._proc.returncode()
        if self.ledger is not None:
            self.ledger.remove(self._proc.pid)
        return self._result(returncode, batch)

    def _result(self, returncode: int, batch: list[dict]) -> RunResult:
        if self._stop_reason in ("stale", "abandoned"):
            return RunResult(self._stop_reason, returncode)
        with self._upload_lock:
            uploaded = self._outputs.final_sync()
        self._flush_metrics(batch)
        if self._tb is not None:
            self._tb.close()
            with self._upload_lock:
                self._upload_tensorboard()
        state: Literal["succeeded", "failed", "cancelled"]
        error = limit = None
        # no "attempt N failed" line here: the API writes the one end line, with the reason (FinishRequest)
        if self._stop_reason == "cancelled":
            state, error = "cancelled", None
        elif self._proc is not None and self._proc.limit_reason:
            state, error, limit = "failed", self._proc.limit_reason, self._proc.limit_reason
        elif returncode == 0:
            state, error = "succeeded", None
        else:
            state = "failed"
            why = f"killed by signal {_signal_name(-returncode)}" if returncode < 0 else f"exit code {returncode}"
            error = why + ("\n" + "\n".join(self._stderr_tail) if self._stderr_tail else "")
            failed = explain_failure("\n".join(self._launcher_tail)) if self._launcher_tail else None
            if failed is not None:  # torchrun: name the rank that failed first, with its own last words
                rank, rank_why = failed
                why = f"rank {rank} failed: {rank_why}"
                tail = self._rank_tails.get(rank)
                error = why + ("\n" + "\n".join(tail) if tail else "")
            # the API writes the attempt's one end line from this error (no line of the runner's own)
        self._flush_logs(batch)
        if self._stop_reason == "stale":  # the last flush can learn that too
            return RunResult("stale", returncode)
        log.info("job %s attempt %s %s; %d final uploads", self.spec.job_id, self.spec.attempt, state, uploaded)
        return RunResult(state, returncode, error, limit)
