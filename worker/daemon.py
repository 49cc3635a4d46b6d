"""The donor daemon: register the DeviceGroups, heartbeat on a thread, serve ``/healthz``, claim assignments.

The daemon holds one credential, its worker token, and speaks only HTTP(S) to the API: no broker URL, no
Redis. Claim threads long-poll ``POST /workers/{id}/claim`` and run each assignment they get: one thread per
device of a pooled group (attempts run side by side on disjoint devices), one for a static slot. Two threads
handed the same assignment run it once: ``start`` is the fence (the second gets 409 and claims again).
Liveness is our own lease: the heartbeat thread reports the running attempts every ``heartbeat_interval_s`` and
receives the attempts to cancel (cancels sent while the worker was offline too).

A heartbeat or claim answered 404 means the API lost this worker's record (reaped after a long partition, or a
reset database): the daemon registers again under the same name and claims under the new worker id. Jobs
already running are left alone; the API's next heartbeat answer says whether they may go on. Answered 410 (a
newer registration with the same token superseded this one) or 403 ``token_revoked``, the daemon stops: two
copies with one token must not keep taking the token from each other.
On start, the daemon kills the job process groups a SIGKILLed predecessor left (see ``worker.leftovers``).
Every attempt runs in the sandbox the settings chose (``worker.sandbox``); its name is sent at registration.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from contract.errors import ErrorCode
from worker.client import AuthError, NotFound, ServerUnavailable, Superseded, WorkerAPIError, WorkerClient
from worker.devices import DeviceGroupOffer, offer_from_settings
from worker.leftovers import LEDGER_FILE, ProcessGroupLedger
from worker.probe import run_probe
from worker.sandbox import Sandbox, create_sandbox
from worker.settings import WorkerSettings
from worker.tasks import AttemptExecutor

__all__ = ["WorkerDaemon", "WorkerStopped"]

log = logging.getLogger(__name__)


class WorkerStopped(Exception):
    """The API will not have this worker any more: superseded by another registration of its token, or the token
    was revoked. Restarting does not help (or takes the token back from the other copy)."""


class WorkerDaemon:
    def __init__(self, settings: WorkerSettings, client: WorkerClient | None = None, sandbox: Sandbox | None = None):
        """Raises ``worker.sandbox.SandboxError`` (saying what to do) when the chosen sandbox cannot run here."""
        self.settings = settings
        self.sandbox = sandbox or create_sandbox(
            settings.isolation,
            bwrap=settings.bwrap_path,
            use_cgroups=settings.use_cgroups,
            egress_allow=tuple(settings.egress_allow) if settings.egress else (),
        )
        self.client = client or WorkerClient(settings.server_url, settings.token_value())
        self.offer: DeviceGroupOffer = offer_from_settings(settings)
        cuda = ",".join(str(i) for i in range(self.offer.ranks)) if self.offer.device_type == "cuda" else None
        self.ledger = ProcessGroupLedger(settings.work_dir.resolve() / LEDGER_FILE)
        self.executor = AttemptExecutor(
            self.client, settings, cuda_visible_devices=cuda, ledger=self.ledger, sandbox=self.sandbox,
            ranks=self.offer.ranks,
        )
        self.worker_id: str | None = None
        self.approved = True
        self.claim_wait_s = 20.0
        self.heartbeat_interval_s = settings.heartbeat_interval_s or 10.0
        self.lease_s = 3 * self.heartbeat_interval_s
        self.last_heartbeat: float | None = None  # monotonic time of the last successful heartbeat
        self._stop = threading.Event()
        self._health: ThreadingHTTPServer | None = None
        self.stopped_because: str | None = None  # set when the API refuses this worker for good
        self._probe: dict | None = None
        self._register_lock = threading.Lock()

    # ------------------------------------------------------------ registration and heartbeats

    @property
    def probe(self) -> dict:
        """The hardware probe, measured once per daemon (a timed matmul per device; about a second)."""
        if self._probe is None:
            self._probe = run_probe(self.settings.probe_file, with_cuda=self.offer.device_type != "cpu")
            log.info("hardware probe: %s", self._probe)
        return self._probe

    def register(self, max_wait_s: float | None = None) -> dict:
        """Register, waiting for the API while it is unreachable; a bad token fails at once."""
        deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
        while True:
            try:
                reply = self.client.register(
                    self.settings.name, socket.gethostname(), [self.offer.as_dict()], isolation=self.sandbox.isolation,
                    probe=self.probe,
                )
                break
            except ServerUnavailable as exc:
                if deadline is not None and time.monotonic() > deadline:
                    raise
                log.warning("API not reachable (%s); retrying registration", exc)
                time.sleep(2)
        self.worker_id = str(reply["worker_id"])
        self.approved = bool(reply.get("approved", True))
        self.claim_wait_s = float(reply.get("claim_wait_s", 20.0))
        self.heartbeat_interval_s = self.settings.heartbeat_interval_s or float(reply.get("heartbeat_interval_s", 10))
        self.lease_s = float(reply.get("lease_s", 3 * self.heartbeat_interval_s))
        self.last_heartbeat = time.monotonic()
        log.info(
            "registered as worker %s offering %s x %s (%s), isolation %s", self.worker_id,
            self.offer.ranks, self.offer.device_type, "shared by count" if self.offer.pooled else "one job at a time",
            self.sandbox.isolation,
        )
        if not self.approved:
            log.warning(
                "worker %s is awaiting approval: it gets no jobs until the platform admin approves it "
                "(twinkle-scheduler approve-worker %s)", self.worker_id, self.worker_id,
            )
        return reply

    def heartbeat_once(self) -> list[tuple[str, int]]:
        """One heartbeat; cancels the attempts the API names. Returns them."""
        assert self.worker_id is not None, "register() first"
        cancels = self.client.heartbeat(self.worker_id, self.executor.running())
        self.last_heartbeat = time.monotonic()
        for job_id, attempt in cancels:
            self.executor.cancel(job_id, attempt)
        return cancels

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval_s):
            used = self.worker_id
            try:
                self.heartbeat_once()
            except NotFound as exc:
                log.warning("the API does not know worker %s any more (%s); registering again", used, exc)
                self._register_again(used)
            except (Superseded, AuthError) as exc:
                if not self._refused_for_good(exc, used):
                    log.error("heartbeat refused (%s): the worker token is wrong", exc)
            except (WorkerAPIError, OSError, httpx.HTTPError) as exc:
                # one line per missed beat: an API that is down for an hour must not fill the log with tracebacks
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            except Exception as exc:  # the heartbeat thread must outlive any surprise
                log.error("heartbeat failed: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))

    def _register_again(self, failed_id: str | None) -> None:
        """Same name, same DeviceGroups, a new worker id; a failure is retried at the next beat. Only once per
        lost id: the heartbeat and claim threads may both notice, and a second registration would supersede the
        first."""
        with self._register_lock:
            if self.worker_id != failed_id:
                return  # the other thread registered again already
            old = self.worker_id
            try:
                self.register(max_wait_s=0)
            except (WorkerAPIError, OSError) as exc:
                log.warning("registering again failed (%s); retrying at the next heartbeat", exc)
                return
        if self.executor.running():
            log.warning(
                "registered again as %s (was %s) while running %s; the API decides at the next heartbeat whether "
                "they may go on", self.worker_id, old, self.executor.running(),
            )

    def _refused_for_good(self, exc: Exception, used: str | None) -> bool:
        """Stop the daemon when the API says this worker is superseded or its token revoked; True if so. A 410
        for an id this daemon has replaced itself (a call in flight while it registered again) is not a stop."""
        code = getattr(exc, "code", "")
        if not isinstance(exc, Superseded) and code != ErrorCode.TOKEN_REVOKED:
            return False
        if isinstance(exc, Superseded) and used != self.worker_id:
            return True
        if self.stopped_because is None:
            self.stopped_because = getattr(exc, "message", str(exc))
            log.error("the API refuses worker %s for good: %s; stopping", self.worker_id, self.stopped_because)
        self._stop.set()
        return True

    # ------------------------------------------------------------ claiming assignments

    def claim_once(self) -> tuple[str, int] | None:
        """One claim (a long poll of up to ``claim_wait_s``); runs the assignment it gets. Returns it."""
        assert self.worker_id is not None, "register() first"
        got = self.client.claim(self.worker_id, wait=self.claim_wait_s)
        if got is None:
            return None
        job_id, attempt = got
        self.executor.run_attempt(job_id, attempt)
        return got

    @property
    def concurrency(self) -> int:
        """How many attempts may run side by side: one per device of a pooled group (the dispatcher never gives
        more), one for a static slot."""
        return self.offer.ranks if self.offer.pooled else 1

    def _claim_loop(self) -> None:
        while not self._stop.is_set():
            used = self.worker_id
            try:
                self.claim_once()
            except NotFound as exc:
                log.warning("the API does not know worker %s any more (%s); registering again", used, exc)
                self._register_again(used)
                self._stop.wait(1.0)
            except (Superseded, AuthError) as exc:
                if not self._refused_for_good(exc, used):
                    log.error("claim refused (%s): the worker token is wrong", exc)
                    self._stop.wait(self.heartbeat_interval_s)
            except (WorkerAPIError, OSError, httpx.HTTPError) as exc:
                log.warning("claim failed: %s: %s", type(exc).__name__, exc)
                self._stop.wait(2.0)
            except Exception as exc:  # the claim thread must outlive any surprise
                log.error("claim failed: %s: %s", type(exc).__name__, exc, exc_info=True)
                self._stop.wait(2.0)

    def healthy(self) -> bool:
        return self.last_heartbeat is not None and time.monotonic() - self.last_heartbeat <= self.lease_s

    # ------------------------------------------------------------ health endpoint

    def start_health_server(self) -> int:
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                if self.path.split("?")[0] != "/healthz":
                    self.send_error(404)
                    return
                ok = daemon.healthy()
                age = None if daemon.last_heartbeat is None else round(time.monotonic() - daemon.last_heartbeat, 1)
                body = json.dumps(
                    {
                        "status": "ok" if ok else "unhealthy",
                        "worker_id": daemon.worker_id,
                        "last_heartbeat_age_s": age,
                        "running": [{"job_id": j, "attempt": n} for j, n in daemon.executor.running()],
                    }
                ).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # probes every few seconds would flood the log
                pass

        self._health = ThreadingHTTPServer((self.settings.health_host, self.settings.health_port), Handler)
        threading.Thread(target=self._health.serve_forever, daemon=True, name="worker-health").start()
        port = self._health.server_address[1]
        log.info("health endpoint on http://%s:%s/healthz", self.settings.health_host, port)
        return port

    # ------------------------------------------------------------ the whole daemon

    def run(self) -> None:
        """Register, start heartbeats, the health endpoint and the claim thread, then wait for SIGTERM/SIGINT.

        Raises ``WorkerStopped`` when the API refused this worker for good (superseded, or its token revoked)."""
        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.kill_leftovers(grace_s=self.settings.kill_grace_s)
        self.prepare_assets()
        self.executor.deliver_leftovers()  # reports a killed predecessor left on disk go first (worker.outbox)
        self.register()
        self.start_health_server()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        threading.Thread(target=self._heartbeat_loop, daemon=True, name="worker-heartbeat").start()
        claimers = [
            threading.Thread(target=self._claim_loop, daemon=True, name=f"worker-claim-{i}")
            for i in range(self.concurrency)
        ]
        for t in claimers:
            t.start()
        log.info("claiming assignments for worker %s with %d thread(s) (pid %s)", self.worker_id, len(claimers),
                 os.getpid())
        try:
            while not self._stop.wait(1.0):
                pass
            log.info("shutting down: stopping running jobs (the scheduler requeues them)")
        finally:
            self.stop()
            for t in claimers:
                t.join(timeout=self.settings.kill_grace_s + 5)
        if self.stopped_because is not None:
            raise WorkerStopped(self.stopped_because)

    def prepare_assets(self) -> None:
        """Fill the assets cache before any job runs: sandboxed jobs see it read-only (one job must not be able
        to change what the next one loads), so they could not write a missing file there themselves."""
        folder = self.settings.assets_dir
        if not folder or self.sandbox.isolation != "bwrap":
            return
        root = Path(folder)
        wanted = ("tiny-qwen2/config.json", "tiny-qwen2/twinkle_tiny.json", "self_cognition.jsonl")
        if all((root / p).exists() for p in wanted):
            return
        log.info("making the tiny model and data in %s (once)", root)
        code = (
            "import sys; from twinkle.assets import tiny_model_path as t, self_cognition_path as s; "
            "t(sys.argv[1]); s(sys.argv[1])"
        )
        done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            log.warning("could not fill the assets cache %s: %s", root, done.stderr.strip()[-500:])

    def stop(self) -> None:
        self._stop.set()
        self.executor.abandon_all()
        if self._health is not None:
            self._health.shutdown()
            self._health = None
