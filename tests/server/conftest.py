"""A real twinkle-server on the tiny model, uvicorn in a thread of the test process."""

from __future__ import annotations

import pytest
from server_helpers import free_port, serve_in_thread


@pytest.fixture(scope="module")
def server_url(tiny_model_dir, tmp_path_factory):
    """One in-process server per test module: max_loras=2, max_length=64, adapters expire after 3 s of silence."""
    from twinkle.server import ServerConfig
    from twinkle.server.settings import ServerSettings

    save_dir = tmp_path_factory.mktemp("ckpt")
    config = ServerConfig.single_model(str(tiny_model_dir), name="tiny", max_loras=2, port=free_port(), max_length=64,
                                       adapter_timeout=3)
    url, stop = serve_in_thread(config, ServerSettings(default_save_dir=str(save_dir), cache_dir=str(save_dir / ".cache")))
    yield url
    stop()
