"""Prometheus metrics: jobs by state, queue depth and live workers (read from the DB at scrape time) and the
dispatch latency histogram (observed by the dispatcher; ``twinkle-scheduler dispatch --metrics-port`` serves it
when the dispatcher runs in its own process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.db import Database, JobModel, JobState, WorkerModel, WorkerState

DISPATCH_LATENCY = Histogram(
    "twinkle_dispatch_latency_seconds",
    "Time from a job being queued to its assignment being sent to a worker",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
)


class DbCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Any]:
        by_state = GaugeMetricFamily("twinkle_jobs", "Jobs by state", labels=["state"])
        depth = GaugeMetricFamily("twinkle_queue_depth", "Jobs waiting in the queue")
        live = GaugeMetricFamily("twinkle_live_workers", "Workers holding a live lease")
        with self.db.session() as s:
            counts = dict(s.execute(sa.select(JobModel.state, sa.func.count()).group_by(JobModel.state)).all())
            n_live = s.scalar(
                sa.select(sa.func.count()).select_from(WorkerModel).where(WorkerModel.state == WorkerState.LIVE)
            )
        for state in JobState:
            by_state.add_metric([state.value], counts.get(state.value, 0))
        depth.add_metric([], counts.get(JobState.QUEUED.value, 0))
        live.add_metric([], n_live or 0)
        yield by_state
        yield depth
        yield live


def app_registry(db: Database) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DbCollector(db))
    return reg
