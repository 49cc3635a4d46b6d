"""Per-tenant admission before a call is queued (http.md §3.5): input size and a sliding-window rate limit.

``rps_limit`` requests and ``tps_limit`` input tokens per ``window_seconds`` per tenant; ``max_input_tokens`` per
call. A limit of 0 disables it (ours: upstream's comparison makes 0 refuse everything). Refusals are 413 (too
big) and 429 (too fast), answered at once, never queued.
"""

from __future__ import annotations

import collections
import threading
import time

from twinkle.server.config import QueueConfig
from twinkle.server.errors import LimitError, UserError

__all__ = ["Admission"]


class Admission:
    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._events: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)

    def admit(self, tenant: str, tokens: int) -> None:
        cfg = self.config
        if not cfg.enabled:
            return
        if cfg.max_input_tokens and tokens > cfg.max_input_tokens:
            raise UserError(413, f"Input tokens ({tokens}) exceed maximum allowed ({cfg.max_input_tokens}); "
                                 f"send smaller batches")
        now = time.monotonic()
        with self._lock:
            window = self._events[tenant]
            while window and now - window[0][0] >= cfg.window_seconds:
                window.popleft()
            if cfg.rps_limit and len(window) >= cfg.rps_limit:
                raise LimitError(f"Rate limit exceeded: RPS limit exceeded: {len(window)} requests in "
                                 f"{cfg.window_seconds}s (limit {cfg.rps_limit}); retry shortly")
            used = sum(n for _, n in window)
            if cfg.tps_limit and used + tokens > cfg.tps_limit:
                raise LimitError(f"Rate limit exceeded: TPS limit exceeded: {used} + {tokens} input tokens in "
                                 f"{cfg.window_seconds}s (limit {cfg.tps_limit}); retry shortly")
            window.append((now, tokens))


def count_input_tokens(inputs: object) -> int:
    """Summed ``len(input_ids)`` of the rows of a call (0 for Trajectories, which are encoded on the server)."""
    rows = [inputs] if isinstance(inputs, dict) else inputs if isinstance(inputs, list) else []
    total = 0
    for row in rows:
        ids = row.get("input_ids") if isinstance(row, dict) else None
        if isinstance(ids, list):
            total += sum(len(r) for r in ids) if ids and isinstance(ids[0], list) else len(ids)
    return total
