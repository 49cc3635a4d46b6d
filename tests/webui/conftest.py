"""Fixtures for the web UI tests: headless Chromium (Debian's ``chromium`` package, driven by Playwright) and a
live platform stack started the way users start it: ``twinkle-scheduler serve`` and ``dispatch`` plus a real
``twinkle-worker``, all as child processes against a real Redis.

Install the browser once with ``apt-get update && apt-get install -y chromium``; never ``playwright install``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from webui_testkit import ARTIFACTS, CHROMIUM, Stack, start_stack

from scheduler.testing.fixtures import scheduler_db_url, scheduler_env, scheduler_overrides  # noqa: F401


@pytest.fixture(scope="module")
def stack(redis_server_url, s3_endpoint, tmp_path_factory) -> Iterator[Stack]:
    """API + dispatcher on a fresh SQLite database, Redis db 12 and an S3 bucket (moto_server), so checkpoint
    links are presigned S3 URLs as in production; tests start the workers they need."""
    import uuid

    import boto3
    import redis

    redis_url = redis_server_url.rstrip("/") + "/12"
    redis.Redis.from_url(redis_url).flushdb()
    s3 = {
        "endpoint_url": s3_endpoint,
        "bucket": f"webui-{uuid.uuid4().hex[:10]}",
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=s3["access_key_id"],
        aws_secret_access_key=s3["secret_access_key"],
        region_name=s3["region"],
    ).create_bucket(Bucket=s3["bucket"])
    running = start_stack(tmp_path_factory.mktemp("webui-stack"), redis_url, s3=s3)
    try:
        yield running
    finally:
        running.stop()


# ---------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium from the system package, for the whole session."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install it with `apt-get update && apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(chromium, request):
    """A fresh browser context (no cookies) and page; page errors fail the test, a screenshot is kept."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):  # a closed page has nothing to show
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-final.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"




@pytest.fixture()
def modules(page, ui_only_url):
    """Run ``body`` with ``m`` bound to a UI module, in a page of the UI's origin (so imports run under the real
    CSP); ``arg`` is passed in as ``arg``."""
    import webui

    page.goto(f"{ui_only_url}/login")
    prefix = f"/ui/{webui.asset_version()}"

    def run(module: str, body: str, arg=None):
        return page.evaluate(
            f"async (arg) => {{ const m = await import('{prefix}/{module}'); {body} }}",
            arg,
        )

    return run


@pytest.fixture(scope="module")
def ui_only_url() -> Iterator[str]:
    """The UI alone (no API behind it) in a uvicorn thread: enough to import and exercise the ES modules."""
    from fastapi import FastAPI

    import webui
    from scheduler.testing import serving

    app = FastAPI()
    webui.mount(app)
    with serving(app) as url:
        yield url
