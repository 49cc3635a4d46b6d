"""Celery configuration. Celery carries assignments, not leases (see DESIGN.md, "Decisions").

Why a multi-hour job is never delivered twice:
- ``task_acks_late=False``: the worker acks ``twinkle.run_attempt`` when it receives it, before running.
  With the Redis broker an unacked message is redelivered after ``visibility_timeout`` even while the first
  delivery is still running, so a late ack would duplicate every job longer than the timeout.
- ``task_reject_on_worker_lost=False``: a killed worker process must not requeue the message either; the
  reaper requeues the *job* (as attempt n+1) when the worker's lease expires, which the DB fences.
- ``worker_prefetch_multiplier=1`` with ``-c 1`` per DeviceGroup slot: a worker holds at most one assignment
  it is not yet running, so nothing waits behind a long job on a busy worker.
- ``visibility_timeout`` (1 h) only matters for a message fetched but not yet acked (a crash in that
  instant); redelivery then is harmless because the task is idempotent on ``(job_id, attempt)``: the
  worker's ``POST /attempts/{job}/{n}/start`` answers 409 to a second start or a stale attempt.
- A lost message (broker restart) is covered by ``START_DEADLINE_S``: an assignment nobody confirmed is
  dispatched again from the database, which is the source of truth.

The dispatcher's producer has socket timeouts (``PRODUCER_TRANSPORT_OPTIONS``): without them a Redis that accepts
connections but never answers (a paused server, a black-holed network) hangs the publish, and with it the
dispatcher's whole loop, matcher and reaper alike. With them the round fails within seconds and is retried; what
was not delivered is dispatched again at the start deadline. The worker's consumer keeps kombu's defaults: its
BRPOP blocks by design.

Routing: one queue per worker, ``worker.{worker_id}``, messages go by name with ``send_task`` (the task body
lives in ``worker/``). Priorities would be separate queues, not Redis priorities.
"""

from __future__ import annotations

from celery import Celery

from contract.tasks import CELERY_SHARED_CONFIG, TASK_RUN_ATTEMPT, VISIBILITY_TIMEOUT_S

__all__ = ["PRODUCER_TRANSPORT_OPTIONS", "TASK_RUN_ATTEMPT", "VISIBILITY_TIMEOUT_S", "celery_config", "make_celery"]

PRODUCER_TRANSPORT_OPTIONS = {"socket_timeout": 5.0, "socket_connect_timeout": 3.0, "socket_keepalive": True}
"""Seconds a publish may wait on Redis before the dispatcher's round fails (and is retried)."""


def celery_config(broker_url: str) -> dict[str, object]:
    """The dispatcher's (producer's) Celery settings: the shared ones, plus routing by queue name and socket
    timeouts on the broker connection."""
    transport = {**CELERY_SHARED_CONFIG["broker_transport_options"], **PRODUCER_TRANSPORT_OPTIONS}
    return {
        **CELERY_SHARED_CONFIG, "broker_url": broker_url, "task_create_missing_queues": True, "task_routes": {},
        "broker_transport_options": transport, "broker_connection_timeout": 3.0,
    }


def make_celery(broker_url: str) -> Celery:
    app = Celery("twinkle", set_as_current=False)
    app.conf.update(celery_config(broker_url))
    return app
