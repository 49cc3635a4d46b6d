"""Small helpers shared by the engines: free ports, this node's address, and running a coroutine to completion."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["free_port", "node_ip", "run_coroutine"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    """The IP other processes reach this one at: Ray's node IP inside a Ray worker, else loopback-safe default."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - Ray is optional; outside it loopback is the answer
        pass
    return "127.0.0.1"


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh event loop in a thread that is joined (works inside a running loop, e.g. an async
    Ray actor, as upstream's sender does)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="twinkle-ckpt-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
