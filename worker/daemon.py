"""The donor daemon: register the DeviceGroups, heartbeat on a thread, serve ``/healthz``, consume the queue.

Liveness is our own lease, not Celery's: the heartbeat thread reports the running attempts every
``heartbeat_interval_s`` and receives the attempts to cancel (cancels sent while the worker was offline too).
The Celery worker runs in this process (thread pool: one thread per device of a pool, or one for a static slot;
prefetch 1), so the
task, the heartbeat and the health endpoint share the executor's view of what is running.

A heartbeat answered 404 means the API lost this worker's record (reaped after a long partition, or a reset
database): the daemon registers again under the same name and moves its queue consumer to the new worker id.
Jobs already running are left alone; the API's next heartbeat answer says whether they may go on.
On start, the daemon kills the job process groups a SIGKILLed predecessor left (see ``worker.leftovers``).
Every attempt runs in the sandbox the settings chose (``worker.sandbox``); its name is sent at registration.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from worker.client import AuthError, NotFound, ServerUnavailable, WorkerAPIError, WorkerClient
from worker.devices import DeviceGroupOffer, offer_from_settings
from worker.leftovers import LEDGER_FILE, ProcessGroupLedger
from worker.probe import run_probe
from worker.sandbox import Sandbox, create_sandbox
from worker.settings import WorkerSettings
from worker.tasks import AttemptExecutor, create_celery_app

__all__ = ["WorkerDaemon"]

log = logging.getLogger(__name__)


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
        self.queue: str | None = None
        self.broker_url: str | None = None
        self.heartbeat_interval_s = settings.heartbeat_interval_s or 10.0
        self.lease_s = 3 * self.heartbeat_interval_s
        self.last_heartbeat: float | None = None  # monotonic time of the last successful heartbeat
        self._stop = threading.Event()
        self._health: ThreadingHTTPServer | None = None
        self._celery_worker = None  # set by run(); the heartbeat thread moves its consumer to a new queue
        self._consuming: str | None = None  # the queue the Celery consumer reads
        self._probe: dict | None = None

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
        self.worker_id, self.queue = str(reply["worker_id"]), reply["queue"]
        self.broker_url = self.settings.redis_url or reply.get("broker_url")
        if not self.broker_url:
            raise RuntimeError(
                "the API handed out no broker URL; set TWINKLE_WORKER_REDIS_URL to the platform's Redis"
            )
        self.heartbeat_interval_s = self.settings.heartbeat_interval_s or float(reply.get("heartbeat_interval_s", 10))
        self.lease_s = float(reply.get("lease_s", 3 * self.heartbeat_interval_s))
        self.last_heartbeat = time.monotonic()
        log.info(
            "registered as worker %s (queue %s) offering %s x %s (%s), isolation %s", self.worker_id, self.queue,
            self.offer.ranks, self.offer.device_type, "shared by count" if self.offer.pooled else "one job at a time",
            self.sandbox.isolation,
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
            try:
                self.heartbeat_once()
            except NotFound as exc:
                log.warning("the API does not know worker %s any more (%s); registering again", self.worker_id, exc)
                self._register_again()
            except AuthError as exc:
                log.error("heartbeat refused (%s): the worker token was revoked or is wrong", exc)
            except (WorkerAPIError, OSError, httpx.HTTPError) as exc:
                # one line per missed beat: an API that is down for an hour must not fill the log with tracebacks
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            except Exception as exc:  # the heartbeat thread must outlive any surprise
                log.error("heartbeat failed: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self._follow_queue()

    def _register_again(self) -> None:
        """Same name, same DeviceGroups, a new worker id (and queue); a failure is retried at the next beat."""
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

    def _follow_queue(self) -> None:
        """Move the Celery consumer to ``self.queue`` once it changed; the switch runs on the consumer's own loop."""
        consumer = getattr(self._celery_worker, "consumer", None)
        old, new = self._consuming, self.queue
        if old == new or consumer is None or getattr(consumer, "task_consumer", None) is None:
            return  # nothing to do, or the consumer is not up yet: try again at the next beat

        def switch() -> None:
            consumer.add_task_queue(new)
            consumer.cancel_task_queue(old)

        consumer.call_soon(switch)
        self._consuming = new
        log.info("consuming %s instead of %s", new, old)

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
        """Register, start heartbeats and the health endpoint, then consume the queue until a signal stops it."""
        from celery import signals

        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.kill_leftovers(grace_s=self.settings.kill_grace_s)
        self.prepare_assets()
        self.executor.deliver_leftovers()  # reports a killed predecessor left on disk go first (worker.outbox)
        self.register()
        self.start_health_server()
        threading.Thread(target=self._heartbeat_loop, daemon=True, name="worker-heartbeat").start()
        assert self.broker_url is not None  # register() set it or raised
        app = create_celery_app(self.broker_url, self.executor)

        @signals.worker_shutting_down.connect(weak=False)
        def _on_shutdown(**_: object) -> None:
            log.info("shutting down: stopping running jobs (the scheduler requeues them)")
            self.executor.abandon_all()

        self._consuming = self.queue
        worker = self._celery_worker = app.Worker(
            hostname=f"twinkle-{self.worker_id}@{socket.gethostname()}",
            queues=[self._consuming],
            pool="threads",
            # a pool runs as many attempts side by side as it has devices (the dispatcher never gives more)
            concurrency=self.offer.ranks if self.offer.pooled else 1,
            prefetch_multiplier=1,
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            loglevel=self.settings.log_level,
            quiet=True,
        )
        log.info("consuming %s (pid %s)", self.queue, os.getpid())
        try:
            worker.start()
        finally:
            self.stop()

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
