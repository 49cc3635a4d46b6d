"""Helpers for the web UI tests: the platform as child processes (``scheduler.testing.Stack``) with a signed-in
user, screenshots, signing in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from scheduler.testing import stack as harness
from scheduler.testing.net import free_port

__all__ = ["ARTIFACTS", "CHROMIUM", "MAX_BUNDLE_MB", "ROOT", "Stack", "free_port", "shot", "sign_in", "start_stack"]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TWINKLE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "webui"
# Small enough that the oversized-upload test sends only a couple of MB.
MAX_BUNDLE_MB = 1.0



# ---------------------------------------------------------------- the platform (scheduler.testing.Stack)


@dataclass
class Stack:
    """A running platform: ``url`` of the API (which serves the UI at ``/``), an admin and a user token; the
    processes are ``platform``'s (the shared harness), this adds the signed-in user "ada" the pages use."""

    platform: harness.Stack
    user_token: str
    user_name: str

    @property
    def url(self) -> str:
        return self.platform.url

    @property
    def admin_token(self) -> str:
        return self.platform.admin_token

    @property
    def worker_token(self) -> str:
        return self.platform.worker_token()

    @property
    def home(self) -> Path:
        return self.platform.home

    def client(self, token: str | None = None) -> httpx.Client:
        return self.platform.http(token or self.user_token)

    def new_user(self, name: str) -> str:
        return self.platform.create_user(name)

    def logs(self) -> str:
        return self.platform.diagnostics(4000)

    def start_worker(self, name: str = "grace-cpu", timeout: float = 90.0, **settings: str) -> harness.Service:
        """Start a real ``twinkle-worker`` offering one CPU, and wait until it is ready.

        ``settings`` become ``TWINKLE_WORKER_<NAME>`` variables (e.g. ``assets_dir``).
        """
        return self.platform.start_worker(name, timeout=timeout, **{"ranks": "1", **settings})

    def wait_job(self, job_id: str, states: set[str], timeout: float = 120.0) -> dict:
        return self.platform.wait_job(self.user_token, job_id, states, timeout)

    def submit(self, script: str, *, name: str = "job", filename: str = "train.py") -> dict:
        return self.platform.submit(self.user_token, script, name=name, filename=filename)

    def stop(self) -> None:
        self.platform.close()


def start_stack(home: Path, redis_url: str, *, s3: dict | None = None, dispatcher: bool = True) -> Stack:
    """Start the API (and the dispatcher) in ``home``, create the user "ada"; the caller stops it.

    ``s3`` (endpoint_url, bucket, region, access_key_id, secret_access_key) puts checkpoints in an S3 bucket,
    so download links are presigned S3 URLs; without it they are the API's signed local links.
    """
    platform = harness.Stack(
        home, redis_url=redis_url, s3=s3, worker_owner="grace",
        settings={"max_bundle_mb": MAX_BUNDLE_MB, "lease_s": 5, "start_deadline_s": 10},
    )
    try:
        platform.serve()
        if dispatcher:
            platform.dispatch()
        stack = Stack(platform, user_token=platform.create_user("ada"), user_name="ada")
    except BaseException:
        platform.close()
        raise
    return stack


# ---------------------------------------------------------------- browser


def shot(page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/webui/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, stack: Stack, token: str | None = None) -> None:
    page.goto(f"{stack.url}/login")
    page.get_by_label("API token").fill(token or stack.user_token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}/")
