"""Silence is not death: leases expire only after the dispatcher saw heartbeats possible for a full lease
(peers heartbeating, or the API's /readyz healthy). An outage of the API or its database never requeues."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from scheduler.db import WorkerModel
from scheduler.services import dispatch
from scheduler.services.liveness import LeaseGate, api_probe
from scheduler.testing import InProcessWorker, auth, create_worker_token, serving
from scheduler.testing.factories import cpu_group, start_cpu_job
from tests.conftest import free_port

UTC = dt.UTC


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_gate_opens_only_after_a_full_lease_of_evidence_and_closes_on_any_gap():
    clock, healthy = Clock(), {"api": False}
    gate = LeaseGate(lease_s=10, heartbeat_interval_s=1, probe=lambda: healthy["api"], clock=clock)
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    stale = now - dt.timedelta(seconds=60)  # nobody heartbeated for a minute: the API (or DB) is down
    assert not gate.observe(stale, now) and not gate.may_expire()
    clock.t += 100
    assert not gate.observe(stale, now) and not gate.may_expire()  # a long outage opens nothing
    healthy["api"] = True
    assert gate.observe(stale, now) and not gate.may_expire()
    clock.t += 9
    gate.observe(stale, now)
    assert not gate.may_expire()
    clock.t += 1.5
    gate.observe(stale, now)
    assert gate.may_expire() and gate.last_evidence == "API healthy"
    healthy["api"] = False  # one bad round restarts the count
    gate.observe(stale, now)
    assert not gate.may_expire()
    # peers heartbeating are evidence on their own (the API probe is down or unknown)
    gate2 = LeaseGate(lease_s=10, heartbeat_interval_s=1, probe=None, clock=clock)
    fresh = now - dt.timedelta(seconds=1)
    gate2.observe(fresh, now)
    clock.t += 11
    gate2.observe(fresh, now)
    assert gate2.may_expire() and gate2.last_evidence == "peers heartbeating"


def expire_all_leases(env):
    with env.rt.db.session() as s:
        past = dt.datetime.now(UTC) - dt.timedelta(seconds=120)
        s.execute(sa.update(WorkerModel).values(lease_expires_at=past, last_heartbeat_at=past))
        s.commit()


def test_reap_requeues_nothing_while_the_api_is_unreachable_and_does_once_it_is_back(scheduler_env):
    env = scheduler_env
    c, user, w, jid = start_cpu_job(env)
    expire_all_leases(env)  # every worker silent for two minutes: what an API outage looks like

    port = free_port()
    clock = Clock()
    gate = LeaseGate(lease_s=5, heartbeat_interval_s=1, probe=api_probe(f"http://127.0.0.1:{port}", 0.5), clock=clock)

    def reap():
        return dispatch.reap(env.rt.db, start_deadline_s=3600, max_attempts=5, gate=gate)

    for _ in range(5):  # the API is down (nothing listens): however long, nothing is requeued
        clock.t += 10
        assert reap().lost_workers == []
    assert c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()["state"] == "running"

    # the API comes back (a real uvicorn serving the app); the worker still says nothing
    with serving(env.app, port=port):
        assert reap().lost_workers == []  # healthy now, but not for a full lease yet
        clock.t += 6
        res = reap()
        assert res.lost_workers == [w.worker_id]  # healthy a full lease and still silent: lost
        assert c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()["state"] == "queued"


def test_the_dispatcher_builds_its_reaper_with_the_gate(scheduler_env):
    from scheduler.tasks.dispatcher import scheduled_tasks

    env = scheduler_env
    c = env.client
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    expire_all_leases(env)
    reap = next(t for t in scheduled_tasks(env.rt) if t.name == "reap")
    # a fresh dispatcher has seen no evidence for a lease yet: it never requeues in its first lease
    assert reap.run().lost_workers == []
