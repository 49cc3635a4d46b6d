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


def test_a_stalled_redis_fails_the_dispatchers_publish_in_seconds_instead_of_hanging_it():
    """A Redis that accepts connections and never answers (a paused server, a black-holed network) must not wedge
    the dispatcher: the match and the reaper share its loop. The publish fails within the producer's socket
    timeouts; the round is retried and the start deadline re-dispatches what was not delivered."""
    import datetime as dt
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepted by the kernel, never read: every command waits for an answer that never comes
    port = listener.getsockname()[1]
    app = make_celery(f"redis://127.0.0.1:{port}/0")
    sent = [dispatch.Sent("job1", 1, "w1", dt.datetime.now(dt.UTC))]
    outcome: list[BaseException | None] = []

    def publish() -> None:
        try:
            dispatch.send_assignments(app, sent)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcome.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    thread.join(60)
    try:
        assert outcome, "the publish was still hanging after 60 s"
        assert isinstance(outcome[0], Exception) and time.monotonic() - t0 < 30, outcome
    finally:
        listener.close()
