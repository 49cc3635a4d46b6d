"""Redis and database outages are 503 + Retry-After (never 500), retried writes apply once, and a finished
job's stored log holds every line even when Redis was down when the worker first reported."""

from __future__ import annotations

import redis
import sqlalchemy as sa

from scheduler.db import MetricModel
from scheduler.services.logs import read_attempt
from scheduler.testing import auth, create_user
from scheduler.testing.factories import start_cpu_job
from tests.conftest import free_port


def post_logs(c, w, jid, texts, batch=None):
    body = {"lines": [{"ts": 1.0, "stream": "stdout", "text": t} for t in texts]}
    if batch is not None:
        body["batch"] = batch
    return c.post(f"/api/v1/attempts/{jid}/1/logs", json=body, headers=auth(w.token))


class RedisDown:
    """Point the API at a port where no Redis listens (a real refused connection), then back."""

    def __init__(self, env):
        self.env, self.saved = env, env.rt.__dict__.get("redis")

    def __enter__(self):
        self.env.rt.__dict__["redis"] = redis.Redis(port=free_port(), socket_connect_timeout=0.5, decode_responses=True)
        return self

    def __exit__(self, *exc):
        self.env.rt.__dict__["redis"] = self.saved


def test_log_posts_and_finish_while_redis_is_down_are_503_with_retry_after_and_lose_nothing(scheduler_env):
    env = scheduler_env
    c, user, w, jid = start_cpu_job(env)
    assert post_logs(c, w, jid, ["one", "two"], batch=0).status_code == 200
    with RedisDown(env):
        r = post_logs(c, w, jid, ["three"], batch=1)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit() and r.json()["error"]["code"].endswith("_unavailable")
        r = w.finish(jid, 1)
        assert r.status_code == 503, r.text  # the end is not committed while the log cannot be stored
        assert c.get(f"/api/v1/jobs/{jid}", headers=auth(user)).json()["state"] == "running"
    # the worker sends the same batch again, then the end
    assert post_logs(c, w, jid, ["three"], batch=1).status_code == 200
    r = w.finish(jid, 1)
    assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
    text = c.get(f"/api/v1/jobs/{jid}/logs", headers=auth(user)).text
    stored = env.rt.storage.get_bytes(f"users/{c.get('/api/v1/users/me', headers=auth(user)).json()['id']}/jobs/{jid}/attempts/1/logs.txt").decode()
    for t in ("one", "two", "three"):
        assert text.count(t) == 1 and stored.count(t) == 1, stored


def test_a_retried_log_batch_metrics_and_finish_apply_once(scheduler_env):
    env = scheduler_env
    c, user, w, jid = start_cpu_job(env)
    for _ in range(3):  # the answer was lost twice; the worker sent the batch three times
        assert post_logs(c, w, jid, ["a", "b"], batch=7).status_code == 200
    assert post_logs(c, w, jid, ["c"], batch=8).json()["accepted"] == 1
    assert post_logs(c, w, jid, ["c"], batch=8).json()["accepted"] == 0
    assert read_attempt(env.rt.redis, jid, 1).count("a") == 1
    recs = [{"step": 1, "ts": 10.0, "metrics": {"loss": 1.0}}, {"step": 2, "ts": 11.0, "metrics": {"loss": 0.5}}]
    assert w.metrics(jid, 1, recs).json()["accepted"] == 2
    assert w.metrics(jid, 1, recs).json()["accepted"] == 0
    with env.rt.db.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(MetricModel)) == 2
    first = w.finish(jid, 1)
    again = w.finish(jid, 1)
    assert first.status_code == again.status_code == 200 and again.json()["state"] == "succeeded"
    assert w.finish(jid, 1, state="failed", exit_code=1).status_code == 409  # a different end is not a retry
    workers = c.get("/api/v1/workers", headers=auth(user)).json()["items"]
    assert workers[0]["jobs_run"] == 1
    log_text = c.get(f"/api/v1/jobs/{jid}/logs", headers=auth(user)).text
    assert log_text.count("attempt 1 succeeded") == 1


def test_a_database_outage_is_503_not_500(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    user = create_user(c, "alice")
    saved = env.rt.db.engine
    env.rt.db.engine = sa.create_engine(f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/x")
    env.rt.db.sessionmaker.configure(bind=env.rt.db.engine)
    try:
        r = c.get("/api/v1/jobs", headers=auth(user))
        assert r.status_code == 503 and "retry-after" in r.headers, r.text
        assert c.get("/healthz").status_code == 200
    finally:
        env.rt.db.engine = saved
        env.rt.db.sessionmaker.configure(bind=saved)
