"""Safe defaults of the API (issue 13, item 7 and the integer/control-character part of item 6): nosniff on every
answer, cookie sessions refused from other origins, an optional token on /metrics, bounded path and query
integers, ids and artifact paths with control characters refused with a 4xx, and `serve` refusing the public
default secret."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scheduler.testing import auth, create_user, create_worker_token, submit_script


def _signed_in(c):
    token = create_user(c, "alice")
    assert c.post("/api/v1/auth/session", json={"token": token}).status_code == 200
    return token


def test_every_answer_says_nosniff(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    answers = [
        c.get("/api/v1/users/me", headers=auth(token)),  # JSON
        c.get("/api/v1/jobs/nope", headers=auth(token)),  # an error
        c.get("/healthz"),
        c.get("/metrics"),
        c.get("/"),  # the web UI's shell
    ]
    shell = answers[-1].text
    asset = shell[shell.index("/ui/"):].split('"')[0]
    answers.append(c.get(asset))  # a static asset
    assert answers[-1].status_code == 200, asset
    for r in answers:
        assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, r.headers)


def test_a_cookie_session_changes_nothing_from_another_origin(scheduler_env):
    c = scheduler_env.client
    _signed_in(c)
    r = c.post("/api/v1/jobs", files={"file": ("train.py", b"print(1)\n")}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
    r = c.post("/api/v1/jobs", files={"file": ("train.py", b"print(1)\n")})  # no Origin, no Referer: refused too
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
    assert c.get("/api/v1/jobs").json()["total"] == 0, "nothing was submitted"
    # reads stay open to the cookie; our own pages (same host) may change things
    assert c.get("/api/v1/jobs").status_code == 200
    ours = c.post("/api/v1/jobs", files={"file": ("train.py", b"print(1)\n")}, headers={"Origin": "http://testserver"})
    assert ours.status_code == 201, ours.text


def test_a_bearer_token_needs_no_origin(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    assert submit_script(c, token, "print(1)\n").status_code == 201


@pytest.fixture()
def scheduler_overrides():
    return {"metrics_token": "scrape-me"}


def test_metrics_can_require_a_token(scheduler_env):
    c = scheduler_env.client
    r = c.get("/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "metrics_token_required"
    assert c.get("/metrics", headers=auth("wrong")).status_code == 401
    ok = c.get("/metrics", headers=auth("scrape-me"))
    assert ok.status_code == 200 and "twinkle_" in ok.text


def test_huge_integers_and_control_characters_are_4xx_not_5xx(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    worker = create_worker_token(c)
    assert c.get("/api/v1/jobs", params={"offset": 10**30}, headers=auth(user)).status_code == 422
    assert c.get("/api/v1/jobs", params={"offset": 2**63}, headers=auth(user)).status_code == 422
    assert c.post(f"/api/v1/attempts/j1/{2**70}/start", headers=auth(worker)).status_code == 422
    assert c.post("/api/v1/attempts/j1/0/start", headers=auth(worker)).status_code == 422
    assert c.get("/api/v1/jobs/a%00b", headers=auth(user)).status_code == 422
    assert c.post("/api/v1/attempts/a%00b/1/start", headers=auth(worker)).status_code == 422


def test_an_artifact_path_with_a_nul_byte_is_a_clear_4xx():
    from scheduler.errors import InvalidRequest
    from scheduler.services.attempts import check_artifact_path

    for bad in ("output/a\x00b", "output/\x1b[31mred", "output/tab\there"):
        with pytest.raises(InvalidRequest, match="control"):
            check_artifact_path(bad)
    assert check_artifact_path("output/ckpt-1/model.safetensors") == "output/ckpt-1/model.safetensors"


def test_serve_refuses_the_public_default_secret_unless_development_is_chosen(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINKLE_")}
    env["TWINKLE_SCHEDULER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'x.db'}"
    env["TWINKLE_SCHEDULER_PORT"] = "1"  # never reached: serve must stop first
    cmd = [sys.executable, "-m", "scheduler.cli", "serve"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "SECRET_KEY is not set" in r.stdout + r.stderr
