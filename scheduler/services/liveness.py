"""When may silence mean a dead worker? Only when the path a heartbeat takes is known to work.

A lease that runs out during an outage of the API or its database says nothing about the worker: every
worker went silent at once, and requeuing their jobs would run them twice (the workers keep running them and
report when the API is back). So the dispatcher lets leases expire only after it has seen heartbeats
possible for a full lease without a break, where "possible" means, in each reaper round, either

- **peers kept heartbeating**: some worker's heartbeat reached the database within the last
  ``peer_window_s`` (the API and the database accept heartbeats), or
- **the API is healthy**: its ``/readyz`` answered with the database reachable (covers a single worker).

Any round without either evidence (or a round that failed) restarts the count; so does a dispatcher restart,
which therefore never requeues anything during its first lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.db import WorkerModel, utcnow

log = logging.getLogger(__name__)


def api_probe(api_url: str, timeout_s: float = 2.0) -> Callable[[], bool]:
    """A probe of the API's ``/readyz``: True when it answers and reports its database reachable."""
    import httpx

    def probe() -> bool:
        try:
            r = httpx.get(api_url.rstrip("/") + "/readyz", timeout=timeout_s)
            return r.status_code == 200 or r.json().get("checks", {}).get("database") == "ok"
        except Exception:  # noqa: BLE001 - unreachable, refused, garbage: not healthy
            return False

    return probe


def latest_heartbeat(session: Session) -> dt.datetime | None:
    last = session.scalar(sa.select(sa.func.max(WorkerModel.last_heartbeat_at)))
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=dt.UTC)
    return last


class LeaseGate:
    """Tracks the unbroken stretch of evidence that heartbeats could get through; see the module doc."""

    def __init__(
        self,
        lease_s: float,
        heartbeat_interval_s: float,
        probe: Callable[[], bool] | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.lease_s = lease_s
        self.peer_window_s = max(2.5 * heartbeat_interval_s, 2.0)
        self.probe, self.clock = probe, clock
        self.healthy_since: float | None = None
        self.last_evidence = ""

    def observe(self, latest_heartbeat_at: dt.datetime | None, now: dt.datetime | None = None) -> bool:
        """Record one round's evidence; returns whether this round was healthy."""
        now = now or utcnow()
        peers = latest_heartbeat_at is not None and (now - latest_heartbeat_at).total_seconds() <= self.peer_window_s
        healthy = peers or (self.probe is not None and self.probe())
        self.last_evidence = "peers heartbeating" if peers else ("API healthy" if healthy else "none")
        if not healthy:
            if self.healthy_since is not None:
                log.warning("no evidence that heartbeats can reach the API; leases are frozen until there is")
            self.healthy_since = None
        elif self.healthy_since is None:
            self.healthy_since = self.clock()
        return healthy

    def reset(self) -> None:
        self.healthy_since = None

    def may_expire(self) -> bool:
        return self.healthy_since is not None and self.clock() - self.healthy_since >= self.lease_s
