"""``twinkle-scheduler dispatch``: a plain loop running the matcher and the reaper every DISPATCH_INTERVAL_S.

A loop rather than Celery beat: the matcher must see the whole queue at once to share fairly and batch its
writes, so it runs as one process; beat would add a second moving part (and a Celery worker to run the
periodic task) for no gain. Two dispatchers running by mistake are still safe: assignments are conditional
updates on ``state='queued'`` and every worker write is fenced by its attempt number.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.runtime import Runtime
from scheduler.services import dispatch, events
from scheduler.services.liveness import LeaseGate, api_probe
from scheduler.services.validation import ReplayPolicy

log = logging.getLogger(__name__)


@dataclass
class Periodic:
    name: str
    interval_s: float
    run: Callable[[], object]


def scheduled_tasks(rt: Runtime) -> list[Periodic]:
    """Every periodic job of the scheduler and its interval, in one place."""
    s = rt.settings
    gate = LeaseGate(s.lease_s, s.heartbeat_interval_s, api_probe(s.effective_api_url))
    policy = ReplayPolicy.from_settings(s)

    def reap() -> object:
        res = dispatch.reap(rt.db, start_deadline_s=s.start_deadline_s, max_attempts=s.max_attempts, gate=gate)
        ended = res.requeued + dispatch.expire_replays(rt.db, policy)
        if gate.may_expire():  # a canary cut off by an API outage is no failure of its donor
            ended += dispatch.expire_canaries(rt.db, policy)
        events.requeued(rt.db, rt.redis, rt.storage, ended)
        for item in ended:
            log.info("job %s: %s", item.job_id, item.message)
        return res

    def match() -> object:
        res = dispatch.dispatch_round(rt.db, rt.redis, policy)
        if res.assigned:
            log.info("dispatched %d job(s), %d waiting", len(res.assigned), res.waiting)
        return res

    reap_every = max(1.0, min(s.heartbeat_interval_s, s.lease_s / 4))
    return [Periodic("reap", reap_every, reap), Periodic("match", s.dispatch_interval_s, match)]


def run_loop(rt: Runtime, stop: threading.Event) -> None:
    tasks = scheduled_tasks(rt)
    due = {t.name: 0.0 for t in tasks}
    while not stop.is_set():
        now = time.monotonic()
        for t in tasks:
            if now >= due[t.name]:
                try:
                    t.run()
                except Exception:  # a failed round is retried next interval
                    log.exception("%s round failed", t.name)
                due[t.name] = time.monotonic() + t.interval_s
        stop.wait(max(0.05, min(due.values()) - time.monotonic()))
