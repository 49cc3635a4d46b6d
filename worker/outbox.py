"""A per-attempt outbox on disk: what a running job reports (logs, metrics, checkpoints, its end) is written
here first and delivered to the API in order by one sender thread, so an API or Redis outage never loses a
line nor blocks the job, and nothing is applied twice.

- **Order.** Entries go out strictly in the order they were put; ``finish`` is put last, so the API never sees
  an end before the lines and checkpoints that precede it.
- **Durable.** Each entry is appended to ``journal.jsonl`` before ``put`` returns; ``cursor`` counts the
  entries the API acknowledged. A daemon that restarts delivers what its predecessor left
  (``deliver_leftovers``) before it registers again.
- **Exactly once.** An entry's index in the journal is its batch number: the API applies a log batch once per
  number, skips metric records it has, and answers a repeated ``finish`` as it did the first time. So a retry
  after an answer lost in an outage is harmless.
- **Retries.** Unreachable API, 502/503/504 (Redis or the database down): retried forever with capped
  exponential backoff (honouring ``Retry-After``). A 409 ``stale_attempt`` drops the rest (a newer attempt
  owns the job) and the next ``put`` raises ``StaleAttemptSignal`` so the runner stops the job. Any other
  refusal (4xx) drops that one entry with a log line: sending it again could never succeed.
- **Bounded.** Log entries beyond ``max_pending_bytes`` waiting on disk are dropped and counted; a system line
  saying how many is sent once the backlog drains. Metrics, checkpoints and the end are always kept.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from worker.client import ServerUnavailable, StaleAttempt, WorkerAPIError, WorkerClient
from worker.runner import StaleAttemptSignal

__all__ = ["Outbox", "deliver_leftovers"]

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
CURSOR = "cursor"
MAX_BACKOFF_S = 10.0


class Outbox:
    """The outbox of one attempt, in ``folder`` (made if missing; reopened with its backlog if present)."""

    def __init__(
        self,
        client: WorkerClient,
        job_id: str,
        attempt: int,
        folder: Path,
        *,
        max_pending_bytes: int = 64 << 20,
        backoff_s: float = 0.5,
        start: bool = True,
    ):
        self.client, self.job_id, self.attempt, self.folder = client, job_id, attempt, folder
        self.max_pending_bytes, self.backoff_s = max_pending_bytes, backoff_s
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "attempt.json").write_text(json.dumps({"job_id": job_id, "attempt": attempt}))
        self._cond = threading.Condition()
        self._entries: list[tuple[dict[str, Any], int]] = []  # (entry, size on disk), all of them, in order
        self._sent = 0  # entries acknowledged (the cursor)
        self._pending_bytes = 0
        self._dropped_lines = 0
        self._stale = False
        self._finish_reply: dict | None = None
        self._closed = False
        self._load()
        self._journal = open(folder / JOURNAL, "a", encoding="utf-8")  # noqa: SIM115 - open until close()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # ------------------------------------------------------------ state on disk

    def _load(self) -> None:
        path = self.folder / JOURNAL
        if path.exists():
            for raw in path.read_text(encoding="utf-8").splitlines():
                try:
                    self._entries.append((json.loads(raw), len(raw) + 1))
                except json.JSONDecodeError:  # a line torn by a crash mid-write: the last one, never acknowledged
                    break
        try:
            self._sent = min(int((self.folder / CURSOR).read_text() or 0), len(self._entries))
        except (FileNotFoundError, ValueError):
            self._sent = 0
        self._pending_bytes = sum(size for _, size in self._entries[self._sent :])

    def _save_cursor(self) -> None:
        tmp = self.folder / (CURSOR + ".tmp")
        tmp.write_text(str(self._sent))
        tmp.replace(self.folder / CURSOR)

    # ------------------------------------------------------------ the producer side (the runner)

    def _put(self, entry: dict[str, Any], *, droppable: bool = False) -> bool:
        with self._cond:
            if self._stale:
                raise StaleAttemptSignal(f"attempt {self.attempt} of job {self.job_id} is stale")
            if self._closed:
                raise RuntimeError("the outbox is closed")
            entry["seq"] = len(self._entries)
            raw = json.dumps(entry, separators=(",", ":"))
            if droppable and self._pending_bytes + len(raw) + 1 > self.max_pending_bytes:
                self._dropped_lines += len(entry.get("lines", ()))
                return False
            if self._dropped_lines and self._pending_bytes == 0 and entry["kind"] == "logs":
                note = {"ts": time.time(), "stream": "system",
                        "text": f"[worker] {self._dropped_lines} log lines were dropped: the API was unreachable "
                                f"and the worker's log buffer ({self.max_pending_bytes >> 20} MB) was full"}
                entry["lines"] = [note, *entry["lines"]]
                self._dropped_lines = 0
                raw = json.dumps(entry, separators=(",", ":"))
            self._journal.write(raw + "\n")
            self._journal.flush()
            self._entries.append((entry, len(raw) + 1))
            self._pending_bytes += len(raw) + 1
            self._cond.notify_all()
            return True

    def put_logs(self, lines: list[dict]) -> bool:
        """Queue a batch of log lines; False if it was dropped because the backlog is full."""
        return self._put({"kind": "logs", "lines": lines}, droppable=True) if lines else True

    def put_metrics(self, records: list[dict]) -> None:
        if records:
            self._put({"kind": "metrics", "records": records})

    def put_artifact(self, path: str, file: Path) -> None:
        self._put({"kind": "artifact", "path": path, "file": str(file)})

    def put_finish(self, state: str, exit_code: int | None, error: str | None, limit: str | None = None) -> None:
        self._put({"kind": "finish", "state": state, "exit_code": exit_code, "error": error, "limit": limit})

    # ------------------------------------------------------------ the sender

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, daemon=True, name=f"outbox-{self.job_id}-{self.attempt}"
            )
            self._thread.start()

    @property
    def stale(self) -> bool:
        return self._stale

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._entries) - self._sent

    def _deliver(self, entry: dict[str, Any]) -> None:
        kind, seq = entry["kind"], entry["seq"]
        if kind == "logs":
            self.client.post_logs(self.job_id, self.attempt, entry["lines"], batch=seq)
        elif kind == "metrics":
            self.client.post_metrics(self.job_id, self.attempt, entry["records"], batch=seq)
        elif kind == "artifact":
            file = Path(entry["file"])
            if file.exists():
                self.client.put_artifact(self.job_id, self.attempt, entry["path"], file)
            else:
                log.warning("job %s attempt %s: checkpoint file %s is gone; not uploading it",
                            self.job_id, self.attempt, file)
        elif kind == "finish":
            self._finish_reply = self.client.finish(
                self.job_id, self.attempt, entry["state"], entry.get("exit_code"), entry.get("error"),
                entry.get("limit"),
            )

    def _run(self) -> None:
        delay = self.backoff_s
        while True:
            with self._cond:
                while self._sent >= len(self._entries) and not self._closed:
                    self._cond.wait()
                if self._sent >= len(self._entries):
                    return  # closed and drained
                entry, size = self._entries[self._sent]
            try:
                self._deliver(entry)
            except ServerUnavailable as exc:
                log.warning("job %s attempt %s: API unavailable (%s); keeping %d entries on disk, retrying in %.1fs",
                            self.job_id, self.attempt, exc.message[:200], self.pending, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            except StaleAttempt as exc:
                log.warning("job %s attempt %s is stale (%s); dropping its %d unsent entries",
                            self.job_id, self.attempt, exc.message[:200], self.pending)
                with self._cond:
                    self._stale = True
                    self._sent = len(self._entries)
                    self._pending_bytes = 0
                    self._save_cursor()
                    self._cond.notify_all()
                return
            except WorkerAPIError as exc:  # refused for good (bad input, auth): retrying cannot help
                log.error("job %s attempt %s: the API refused %s entry %d: %s",
                          self.job_id, self.attempt, entry["kind"], entry["seq"], exc)
            except Exception:
                log.exception("job %s attempt %s: sending %s entry %d failed", self.job_id, self.attempt,
                              entry["kind"], entry["seq"])
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            delay = self.backoff_s
            with self._cond:
                self._sent += 1
                self._pending_bytes -= size
                self._save_cursor()
                self._cond.notify_all()

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Block until every entry put so far is acknowledged (or dropped as stale). False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._sent < len(self._entries):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def finish_reply(self) -> dict | None:
        return self._finish_reply

    def close(self, *, remove: bool = True) -> None:
        """Stop the sender once drained; remove the folder if everything was delivered."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            drained = self._sent >= len(self._entries)
        if self._thread is not None and drained:
            self._thread.join(timeout=5)
        self._journal.close()
        if remove and drained:
            shutil.rmtree(self.folder, ignore_errors=True)


def deliver_leftovers(client: WorkerClient, root: Path, *, timeout_s: float | None = None) -> int:
    """Deliver what outboxes under ``root`` still hold (a daemon killed with reports unsent); returns how
    many outboxes were drained. Waits for the API as long as ``timeout_s`` allows (None: as long as needed)."""
    done = 0
    if not root.exists():
        return 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            meta = json.loads((folder / "attempt.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            shutil.rmtree(folder, ignore_errors=True)
            continue
        box = Outbox(client, meta["job_id"], int(meta["attempt"]), folder)
        if box.pending:
            log.info("delivering %d report(s) of job %s attempt %s left by an earlier run",
                     box.pending, box.job_id, box.attempt)
        drained = box.wait_drained(timeout_s)
        box.close(remove=drained)
        done += int(drained)
    return done
