"""``TwinkleClient`` and ``init_twinkle_client`` (http.md §9.1-9.2): sessions, heartbeats, runs and checkpoints."""

from __future__ import annotations

import threading
from typing import Any

from twinkle_client.http import TwinkleClientError, request, state
from twinkle_client.utils import logger

__all__ = ["TwinkleClient", "init_twinkle_client"]


class TwinkleClient:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, route_prefix: str = "/twinkle",
                 session_heartbeat_interval: float = 10, session_metadata: dict[str, Any] | None = None) -> None:
        if base_url:
            state.base_url = base_url
        if api_key:
            state.api_key = api_key
        self.prefix = route_prefix.strip("/")
        self.interval = session_heartbeat_interval
        self._stop = threading.Event()
        self.session_id = self.create_session(session_metadata)
        state.session_id = self.session_id
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="twinkle-heartbeat")
        if session_heartbeat_interval and session_heartbeat_interval > 0:
            self._thread.start()

    def _get(self, path: str, **params: Any) -> Any:
        return request("GET", f"{self.prefix}/{path}", **params)

    def _post(self, path: str, body: Any = None) -> Any:
        return request("POST", f"{self.prefix}/{path}", body)

    def create_session(self, metadata: dict[str, Any] | None = None) -> str:
        return self._post("create_session", {"metadata": metadata or {}})["session_id"]

    def heartbeat(self) -> None:
        self._post("session_heartbeat", {"session_id": self.session_id})

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.heartbeat()
            except Exception as exc:  # noqa: BLE001 - logged only (http.md §9.7)
                logger.warning("session heartbeat failed: %s", exc)

    def health_check(self) -> bool:
        try:
            return self._get("healthz").get("status") == "ok"
        except Exception:  # noqa: BLE001
            return False

    def get_server_capabilities(self) -> dict[str, Any]:
        return self._get("get_server_capabilities")

    def get_capacity_info(self) -> dict[str, int]:
        return self._get("capacity_info")

    def list_training_runs(self, limit: int = 20, offset: int = 0, all_users: bool = False) -> list[dict[str, Any]]:
        return self._get("training_runs", limit=limit, offset=offset)["training_runs"]

    def get_training_run(self, run_id: str) -> dict[str, Any]:
        return self._get(f"training_runs/{run_id}")

    def list_checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        return self._get(f"training_runs/{run_id}/checkpoints")["checkpoints"]

    def get_latest_checkpoint_path(self, run_id: str) -> str | None:
        checkpoints = [c for c in self.list_checkpoints(run_id) if c["checkpoint_type"] == "training"]
        return checkpoints[-1]["twinkle_path"] if checkpoints else None

    def delete_checkpoint(self, run_id: str, checkpoint_id: str) -> dict[str, Any]:
        return request("DELETE", f"{self.prefix}/training_runs/{run_id}/checkpoints/{checkpoint_id}")

    def get_checkpoint_twinkle_path(self, run_id: str, checkpoint_id: str) -> str:
        return self._get(f"checkpoint_path/{run_id}/{checkpoint_id}")["twinkle_path"]

    def get_weights_info(self, twinkle_path: str) -> dict[str, Any]:
        return self._post("weights_info", {"twinkle_path": twinkle_path})

    def retrieve_future(self, request_id: str, timeout: float | None = None) -> Any:
        body = {"request_id": request_id} | ({"timeout": timeout} if timeout is not None else {})
        return request("POST", "retrieve_future", body)

    def close(self) -> None:
        self._stop.set()


_client: TwinkleClient | None = None


def init_twinkle_client(base_url: str | None = None, api_key: str | None = None,
                        session_heartbeat_interval: float = 10, **kw: Any) -> TwinkleClient:
    """Point every twinkle_client object at a server, open a session and keep it alive with heartbeats."""
    global _client
    if _client is not None:
        _client.close()
    _client = TwinkleClient(base_url, api_key, session_heartbeat_interval=session_heartbeat_interval, **kw)
    return _client


__all__ += ["TwinkleClientError"]
