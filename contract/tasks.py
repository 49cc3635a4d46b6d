"""What the scheduler and a worker say through Celery: the task, its arguments, the queues, the configuration.

Celery carries assignments, not leases (see ``scheduler/tasks/celery_app.py`` for why each setting is what it is).
Messages are JSON and carry ids only; the worker reads everything else from the API.
"""

from __future__ import annotations

from typing import Any

TASK_RUN_ATTEMPT = "twinkle.run_attempt"
"""Positional arguments: ``job_id: str, attempt: int``; idempotent on the pair (a second start answers 409)."""

DEFAULT_QUEUE = "twinkle.default"
VISIBILITY_TIMEOUT_S = 3600


def worker_queue(worker_id: str) -> str:
    """The queue of one worker: assignments are routed to the worker they were matched to."""
    return f"worker.{worker_id}"


CELERY_SHARED_CONFIG: dict[str, Any] = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "result_backend": None,
    "task_ignore_result": True,
    "task_acks_late": False,
    "task_reject_on_worker_lost": False,
    "worker_prefetch_multiplier": 1,
    "task_default_queue": DEFAULT_QUEUE,
    "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
    "broker_connection_retry_on_startup": True,
}
"""The Celery settings the dispatcher (producer) and the worker (consumer) must agree on; each adds its own."""
