"""Helpers of the HTTP-mode tests: ports, a wire-level tenant, starting a server process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

from scheduler.testing.net import free_port as free_port  # re-exported for the tests of this folder


def wait_healthy(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/api/v1/twinkle/healthz", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no healthy server at {url} after {timeout}s")


class Tenant:
    """One tenant speaking the wire protocol directly (several per test, unlike the process-global client)."""

    def __init__(self, url: str, token: str, model: str = "tiny") -> None:
        self.url, self.token, self.model = url, token, model
        self.session_id: str | None = None
        self.http = requests.Session()

    def headers(self, **extra: str) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}", "x-request-id": f"req-{self.token}"}
        if self.session_id:
            h["X-Twinkle-Session-Id"] = self.session_id
        return h | extra

    def raw(self, method: str, path: str, body=None, **extra: str) -> requests.Response:
        return self.http.request(method, f"{self.url}/api/v1/{path}", json=body, headers=self.headers(**extra),
                                 timeout=300)

    def start(self, heartbeat: bool = True) -> Tenant:
        """Open a session; keep it alive every 0.5 s like the real clients do (unless ``heartbeat=False``)."""
        r = self.raw("POST", "twinkle/create_session", {})
        assert r.status_code == 200, r.text
        self.session_id = r.json()["session_id"]
        self._stop = threading.Event()
        if heartbeat:
            def beat():
                while not self._stop.wait(0.5):
                    with contextlib.suppress(requests.RequestException):
                        requests.post(f"{self.url}/api/v1/twinkle/session_heartbeat", headers=self.headers(),
                                      json={"session_id": self.session_id}, timeout=10)
            threading.Thread(target=beat, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def heartbeat(self) -> requests.Response:
        return self.raw("POST", "twinkle/session_heartbeat", {"session_id": self.session_id})

    def model_call(self, route: str, **body) -> requests.Response:
        return self.raw("POST", f"model/{self.model}/twinkle/{route}", body)

    def ok(self, route: str, **body):
        r = self.model_call(route, **body)
        assert r.status_code == 200, f"{route}: {r.status_code} {r.text}"
        return r.json()

    def add(self, name: str = "default", r: int = 4, **kw):
        import json

        config = json.dumps({"r": r, "lora_alpha": 16, "target_modules": "all-linear", "_TWINKLE_TYPE_": "LoraConfig"})
        return self.model_call("add_adapter_to_model", adapter_name=name, config=config, **kw)


def rows(seed: int = 0, n: int = 2, length: int = 10) -> list[dict]:
    import random

    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rnd.randrange(3, 200) for _ in range(length)]
        out.append({"input_ids": ids, "labels": [-100] * 3 + ids[4:] + [-100]})
    return out


def start_server_process(model_dir: str, port: int, save_dir: Path, *extra: str) -> subprocess.Popen:
    """``python -m twinkle.server --model ... --port ...`` as a real child process."""
    env = os.environ | {"TWINKLE_DEFAULT_SAVE_DIR": str(save_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinkle.server", "--model", model_dir, "--name", "tiny", "--port", str(port),
         *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return proc


def new_token() -> str:
    return f"key-{uuid.uuid4().hex[:8]}"


def serve_in_thread(config, settings):
    """Build the app and serve it with uvicorn in a daemon thread; returns (url, stop)."""
    import uvicorn

    from twinkle.server import build_app

    app = build_app(config, settings)
    port = config.http_options.port
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return url, stop
