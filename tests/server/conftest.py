"""A real twinkle-server on the tiny model, uvicorn in a thread of the test process."""

from __future__ import annotations

import threading

import pytest
from server_helpers import free_port, wait_healthy


@pytest.fixture(scope="module")
def server_url(tiny_model_dir, tmp_path_factory):
    """One in-process server per test module: max_loras=2, max_length=64, adapters expire after 3 s of silence."""
    import uvicorn

    from twinkle.server import ServerConfig, build_app
    from twinkle.server.settings import ServerSettings

    save_dir = tmp_path_factory.mktemp("ckpt")
    port = free_port()
    config = ServerConfig.single_model(str(tiny_model_dir), name="tiny", max_loras=2, port=port, max_length=64,
                                       adapter_timeout=3)
    app = build_app(config, ServerSettings(default_save_dir=str(save_dir), cache_dir=str(save_dir / ".cache")))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


