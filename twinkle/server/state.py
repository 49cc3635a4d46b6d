"""In-memory server state (http.md §3): sessions, the adapter registry, futures. One process, so one store.

Thread-safe: the HTTP handlers (event loop), the compute workers and the expiry sweeper all use it.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AdapterRecord", "FutureStore", "Registry", "Session", "Sessions", "tenant_of"]


def tenant_of(token: str, salt: str) -> str:
    """The tenant id: 16 hex chars of a salted HMAC of the token (the token itself is never stored).

    A leading ``tml-`` is dropped first: the Tinker SDK requires it, so ``tml-K`` and ``K`` are one tenant.
    """
    token = token.removeprefix("tml-")
    return hmac.new(salt.encode(), token.encode(), hashlib.sha256).hexdigest()[:16]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Session:
    session_id: str
    tenant: str
    metadata: dict[str, Any]
    created_at: float
    last_heartbeat: float


class Sessions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Session] = {}

    def create(self, tenant: str, metadata: dict[str, Any] | None = None) -> Session:
        now = time.time()
        session = Session(new_id("session"), tenant, dict(metadata or {}), now, now)
        with self._lock:
            self._items[session.session_id] = session
        return session

    def get(self, session_id: str | None, tenant: str) -> Session | None:
        """The caller's session, or None (unknown, expired, or another tenant's: indistinguishable on purpose)."""
        with self._lock:
            session = self._items.get(session_id or "")
        return session if session is not None and session.tenant == tenant else None

    def touch(self, session_id: str, tenant: str) -> bool:
        session = self.get(session_id, tenant)
        if session is None:
            return False
        session.last_heartbeat = time.time()
        return True

    def silent_for(self, session_id: str) -> float | None:
        """Seconds since the session's last heartbeat; None when it does not exist (any more)."""
        with self._lock:
            session = self._items.get(session_id)
        return None if session is None else time.time() - session.last_heartbeat

    def expire(self, timeout: float) -> list[str]:
        now = time.time()
        with self._lock:
            gone = [sid for sid, s in self._items.items() if now - s.last_heartbeat >= timeout]
            for sid in gone:
                del self._items[sid]
        return gone

    def count(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class AdapterRecord:
    name: str  # the server name <session>-<short>, also the training-run id
    short: str
    tenant: str
    session_id: str
    base_model: str
    rank: int
    created_at: float = field(default_factory=time.time)
    expiring: bool = False


class Registry:
    """Every live adapter of every model on this server, for ownership checks and the per-token model limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, AdapterRecord] = {}

    def reserve(self, record: AdapterRecord, per_token_limit: int) -> None:
        """Register an adapter, or raise ``LimitError`` when the tenant holds ``per_token_limit`` already."""
        from twinkle.server.errors import LimitError, UserError

        with self._lock:
            if record.name in self._items:
                raise UserError(409, f"an adapter named {record.short!r} exists in this session already; "
                                     f"pick another name or remove_adapter it first")
            owned = sum(1 for r in self._items.values() if r.tenant == record.tenant)
            if per_token_limit and owned >= per_token_limit:
                raise LimitError(f"Model limit exceeded: {owned}/{per_token_limit} models for this token; remove "
                                 f"an adapter (remove_adapter) before adding another")
            self._items[record.name] = record

    def get(self, name: str, tenant: str) -> AdapterRecord | None:
        with self._lock:
            record = self._items.get(name)
        if record is None or record.tenant != tenant or record.expiring:
            return None
        return record

    def release(self, name: str) -> AdapterRecord | None:
        with self._lock:
            return self._items.pop(name, None)

    def all(self) -> list[AdapterRecord]:
        with self._lock:
            return list(self._items.values())


FINAL = ("completed", "failed")


class FutureStore:
    """Future records ``req_<hex>``: pending -> queued -> running -> completed|failed; terminal states stay."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[str, dict[str, Any]] = {}

    def create(self, tenant: str, model_id: str | None = None) -> str:
        request_id = new_id("req")
        now = time.time()
        with self._cond:
            self._items[request_id] = {
                "status": "pending", "model_id": model_id, "tenant": tenant, "result": None, "error": None,
                "category": None, "queue_state": "active", "queue_state_reason": None,
                "created_at": now, "updated_at": now,
            }
        return request_id

    def update(self, request_id: str, **changes: Any) -> None:
        with self._cond:
            record = self._items.get(request_id)
            if record is None or record["status"] in FINAL:
                return
            record.update(changes, updated_at=time.time())
            self._cond.notify_all()

    def get(self, request_id: str, tenant: str) -> dict[str, Any] | None:
        with self._cond:
            record = self._items.get(request_id)
            return dict(record) if record is not None and record["tenant"] == tenant else None

    def wait(self, request_id: str, tenant: str, timeout: float) -> dict[str, Any] | None:
        """Block until the record is terminal or ``timeout`` passes; returns its latest state (None: unknown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                record = self._items.get(request_id)
                if record is None or record["tenant"] != tenant:
                    return None
                left = deadline - time.monotonic()
                if record["status"] in FINAL or left <= 0:
                    return dict(record)
                self._cond.wait(left)

    def expire(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        with self._cond:
            gone = [k for k, r in self._items.items() if r["updated_at"] < cutoff]
            for key in gone:
                del self._items[key]
        return len(gone)

    def count(self) -> int:
        with self._cond:
            return len(self._items)
