"""``init_tinker_client``: a stock ``tinker`` SDK ``ServiceClient`` pointed at a twinkle-server.

No patching is needed for SDK 0.16.1 (the tested release): the server accepts its ``X-API-Key`` header, needs no
``x-request-id`` on the Tinker routes and hands out ``tinker://`` URIs. The SDK insists on keys starting ``tml-``;
a key without it is prefixed here, and the server drops the prefix when it derives the tenant, so ``my-key`` in
``init_twinkle_client`` and in ``init_tinker_client`` is the same tenant (same runs and checkpoints).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["init_tinker_client"]


def init_tinker_client(base_url: str | None = None, api_key: str | None = None, **kwargs: Any) -> Any:
    """A ``tinker.ServiceClient`` for the server at ``base_url`` (default ``$TINKER_BASE_URL``, then
    ``$TWINKLE_SERVER_URL``) with ``api_key`` (default ``$TWINKLE_SERVER_TOKEN``)."""
    try:
        import tinker
    except ImportError as exc:
        raise ImportError("init_tinker_client needs the Tinker SDK: pip install tinker==0.16.1") from exc
    url = base_url or os.environ.get("TINKER_BASE_URL") or os.environ.get("TWINKLE_SERVER_URL", "http://127.0.0.1:8000")
    key = api_key or os.environ.get("TWINKLE_SERVER_TOKEN", "EMPTY_TOKEN")
    url = url.rstrip("/").removesuffix("/api/v1")  # the SDK adds /api/v1 itself
    return tinker.ServiceClient(base_url=url, api_key=key if key.startswith("tml-") else f"tml-{key}", **kwargs)
