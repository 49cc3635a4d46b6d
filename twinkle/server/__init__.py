"""twinkle HTTP mode, server side: one base model, many tenants' LoRA adapters (``twinkle-server``).

>>> from twinkle.server import ServerConfig, launch_server
>>> launch_server(config_path="server.yaml")   # or: twinkle-server launch -c server.yaml

The wire contract is ../shared/twinkle-api/http.md; docs/http-mode.md is the user guide.
"""

from twinkle.server.config import ConfigFileError, ServerConfig
from twinkle.server.launcher import ServerLauncher, launch_server

__all__ = ["ConfigFileError", "ServerConfig", "ServerLauncher", "build_app", "launch_server"]


def build_app(config, settings=None):
    """The FastAPI app for ``config`` (loads the models: seconds to minutes)."""
    from twinkle.server.app import build_app as _build

    return _build(config, settings)
