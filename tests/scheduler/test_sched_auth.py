"""Users, tokens, the session cookie, and which token kind may use which route (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from scheduler.db import ApiTokenModel
from scheduler.testing import auth, create_user, create_worker_token
from scheduler.testing.factories import ADMIN_TOKEN


def test_create_user_needs_admin_and_tokens_are_stored_hashed(scheduler_env):
    c = scheduler_env.client
    r = c.post("/api/v1/users", json={"name": "alice"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    token = create_user(c, "alice")
    assert token.startswith("twk_u_") and len(token) > 40
    r = c.post("/api/v1/users", json={"name": "bob"}, headers=auth(token))
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
    assert c.get("/api/v1/users/me", headers=auth(token)).json()["name"] == "alice"
    with scheduler_env.rt.db.session() as s:
        hashes = s.scalars(sa.select(ApiTokenModel.token_hash)).all()
    assert hashlib.sha256(token.encode()).hexdigest() in hashes
    assert token not in hashes
    dup = c.post("/api/v1/users", json={"name": "alice"}, headers=auth(ADMIN_TOKEN))
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "user_exists"


def test_more_tokens_and_wrong_tokens(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    second = c.post("/api/v1/users/me/tokens", headers=auth(token)).json()["token"]
    assert c.get("/api/v1/users/me", headers=auth(second)).status_code == 200
    bad = c.get("/api/v1/users/me", headers=auth("twk_u_not-a-token"))
    assert bad.status_code == 401 and "not valid" in bad.json()["error"]["message"]
    assert c.get("/api/v1/users/me", headers={"Authorization": "Basic abc"}).status_code == 401
    assert c.get("/api/v1/jobs").status_code == 401


def test_worker_token_on_user_routes_is_403_and_user_token_on_worker_routes_is_403(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    worker = create_worker_token(c)
    assert worker.startswith("twk_w_")
    r = c.post("/api/v1/jobs", files={"file": ("t.py", b"print(1)\n")}, headers=auth(worker))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "wrong_token_kind" and "worker token" in r.json()["error"]["message"]
    reg = {"name": "w", "hostname": "h", "device_groups": [{"ranks": 1, "device_type": "cpu"}]}
    r = c.post("/api/v1/workers/register", json=reg, headers=auth(user))
    assert r.status_code == 403 and "worker token" in r.json()["error"]["message"]
    r = c.post("/api/v1/workers/register", json=reg, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 403
    assert c.get("/api/v1/users/me", headers=auth(ADMIN_TOKEN)).status_code == 403


def test_session_cookie_signs_in_and_out(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    bad = c.post("/api/v1/auth/session", json={"token": "nope"})
    assert bad.status_code == 401
    r = c.post("/api/v1/auth/session", json={"token": token})
    assert r.status_code == 200 and r.json()["user"]["name"] == "alice"
    assert "twinkle_session" in r.cookies
    assert c.get("/api/v1/users/me").json()["name"] == "alice"  # the client keeps the cookie
    cookie = r.cookies["twinkle_session"]
    c.cookies.clear()
    assert c.get("/api/v1/users/me", headers={"Cookie": f"twinkle_session={cookie}"}).status_code == 200
    forged = c.get("/api/v1/users/me", headers={"Cookie": f"twinkle_session={cookie}x"})
    assert forged.status_code == 401 and "sign in again" in forged.json()["error"]["message"]
    out = c.delete("/api/v1/auth/session", headers={"Cookie": f"twinkle_session={cookie}"})
    assert out.status_code == 204 and 'twinkle_session=""' in out.headers["set-cookie"]
    assert c.get("/api/v1/users/me").status_code == 401
    wt = create_worker_token(c)
    assert c.post("/api/v1/auth/session", json={"token": wt}).status_code == 403


def test_worker_tokens_and_health(scheduler_env):
    c = scheduler_env.client
    assert c.post("/api/v1/worker-tokens", json={"owner": "lab"}).status_code == 401
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}
    metrics = c.get("/metrics").text
    assert 'twinkle_jobs{state="queued"} 0.0' in metrics
    assert "twinkle_queue_depth 0.0" in metrics and "twinkle_live_workers 0.0" in metrics
    assert "twinkle_dispatch_latency_seconds_bucket" in metrics
    missing = c.get("/api/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_settings_keep_their_secrets_out_of_reprs_and_logs(tmp_path):
    from scheduler.settings import Settings

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'x.db'}", secret_key="s3cr3t-signing-key", admin_token="adm1n-t0ken",
        s3_secret_access_key="aws-s3cr3t",
    )
    shown = repr(settings) + str(settings.model_dump())
    for secret in ("s3cr3t-signing-key", "adm1n-t0ken", "aws-s3cr3t"):
        assert secret not in shown
    assert settings.secret_key.get_secret_value() == "s3cr3t-signing-key"
