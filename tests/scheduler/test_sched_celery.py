"""A real Celery worker consumes the dispatcher's message from its own queue (``worker.{id}``)."""

from __future__ import annotations

import threading

import pytest
from celery.contrib.testing.worker import start_worker

from scheduler.services import dispatch
from scheduler.tasks.celery_app import TASK_RUN_ATTEMPT, celery_config, make_celery
from scheduler.testing import InProcessWorker, create_user, create_worker_token, submit_script
from scheduler.testing.factories import CPU_JOB, cpu_group


def test_config_acks_early_and_never_requeues_on_worker_loss():
    conf = celery_config("redis://x")
    assert conf["task_acks_late"] is False and conf["task_reject_on_worker_lost"] is False
    assert conf["worker_prefetch_multiplier"] == 1 and conf["task_serializer"] == "json"


@pytest.mark.slow
def test_real_celery_worker_receives_the_assignment(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    jid = submit_script(c, user, CPU_JOB).json()["id"]

    consumer = make_celery(env.settings.redis_url)
    got: list[tuple[str, int]] = []
    done = threading.Event()

    @consumer.task(name=TASK_RUN_ATTEMPT, shared=False)
    def run_attempt(job_id: str, attempt: int) -> None:
        got.append((job_id, attempt))
        # What the real worker does first: confirm the attempt; a duplicate delivery gets 409 here.
        assert w.start(job_id, attempt).status_code == 200
        done.set()

    res = dispatch.dispatch_round(env.rt.db, env.rt.celery)
    assert len(res.assigned) == 1
    with start_worker(consumer, queues=[w.queue], pool="solo", perform_ping_check=False, shutdown_timeout=10):
        assert done.wait(30), "the Celery worker never received twinkle.run_attempt"
    assert got == [(jid, 1)]
    assert env.rt.redis.llen(w.queue) == 0  # acked early and gone from the queue
