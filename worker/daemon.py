"""The donor daemon: register the DeviceGroups, heartbeat on a thread, serve ``/healthz``, consume the queue.

Liveness is our own lease, not Celery's: the heartbeat thread reports the running attempts every
``heartbeat_interval_s`` and receives the attempts to cancel (cancels sent while the worker was offline too).
The Celery worker runs in this process (thread pool, concurrency 1 per DeviceGroup slot, prefetch 1), so the
task, the heartbeat and the health endpoint share the executor's view of what is running.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from worker.client import AuthError, ServerUnavailable, WorkerAPIError, WorkerClient
from worker.devices import DeviceGroupOffer, offer_from_settings
from worker.settings import WorkerSettings
from worker.tasks import AttemptExecutor, create_celery_app

__all__ = ["WorkerDaemon"]

log = logging.getLogger(__name__)


class WorkerDaemon:
    def __init__(self, settings: WorkerSettings, client: WorkerClient | None = None):
        self.settings = settings
        self.client = client or WorkerClient(settings.server_url, settings.token_value())
        self.offer: DeviceGroupOffer = offer_from_settings(settings)
        cuda = ",".join(str(i) for i in range(self.offer.ranks)) if self.offer.device_type == "cuda" else None
        self.executor = AttemptExecutor(self.client, settings, cuda_visible_devices=cuda)
        self.worker_id: str | None = None
        self.queue: str | None = None
        self.broker_url: str | None = None
        self.heartbeat_interval_s = settings.heartbeat_interval_s or 10.0
        self.lease_s = 3 * self.heartbeat_interval_s
        self.last_heartbeat: float | None = None  # monotonic time of the last successful heartbeat
        self._stop = threading.Event()
        self._health: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ registration and heartbeats

    def register(self, max_wait_s: float | None = None) -> dict:
        """Register, waiting for the API while it is unreachable; a bad token fails at once."""
        deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
        while True:
            try:
                reply = self.client.register(self.settings.name, socket.gethostname(), [self.offer.as_dict()])
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
            "registered as worker %s (queue %s) offering %s x %s", self.worker_id, self.queue, self.offer.ranks,
            self.offer.device_type,
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
            except AuthError as exc:
                log.error("heartbeat refused (%s): the worker token was revoked or is wrong", exc)
            except (WorkerAPIError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # noqa: BLE001 - the heartbeat thread must outlive any surprise
                log.exception("heartbeat failed")

    def healthy(self) -> bool:
        return self.last_heartbeat is not None and time.monotonic() - self.last_heartbeat <= self.lease_s

    # ------------------------------------------------------------ health endpoint

    def start_health_server(self) -> int:
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
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
        self.register()
        self.start_health_server()
        threading.Thread(target=self._heartbeat_loop, daemon=True, name="worker-heartbeat").start()
        app = create_celery_app(self.broker_url, self.executor)

        @signals.worker_shutting_down.connect(weak=False)
        def _on_shutdown(**_: object) -> None:
            log.info("shutting down: stopping running jobs (the scheduler requeues them)")
            self.executor.abandon_all()

        worker = app.Worker(
            hostname=f"twinkle-{self.worker_id}@{socket.gethostname()}",
            queues=[self.queue],
            pool="threads",
            concurrency=1,
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

    def stop(self) -> None:
        self._stop.set()
        self.executor.abandon_all()
        if self._health is not None:
            self._health.shutdown()
            self._health = None
