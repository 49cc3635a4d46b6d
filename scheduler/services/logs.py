"""Job logs: live in the Redis Stream ``twinkle:logs:{job_id}``, persisted to storage when an attempt ends.

Each line keeps its attempt, stream (stdout, stderr, system) and time (``contract.jobs.LogEntry``). A finished
attempt is stored twice: ``logs.txt`` (the text, for people and ``GET /jobs/{id}/logs``) and ``logs.jsonl`` (one
entry per line, for ``?format=json``); attempts stored before the JSON copy existed read back from the text with
no time and stream ``stdout``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, cast

import redis

from scheduler.storage import ObjectNotFound, Storage, attempt_key

MAXLEN = 200_000  # lines kept per job in Redis; the full log of a finished attempt is in storage
END_TTL_S = 7 * 24 * 3600  # a finished job's stream lingers this long for late `logs -f` readers
# what XREAD returns with decode_responses: [(key, [(entry id, {field: value}), ...]), ...]
_XRead = list[tuple[str, list[tuple[str, dict[str, str]]]]]


def stream_key(job_id: str) -> str:
    return f"twinkle:logs:{job_id}"


def batches_key(job_id: str) -> str:
    return f"twinkle:logs:{job_id}:batches"


def usage_key(job_id: str) -> str:
    return f"twinkle:logs:{job_id}:usage"


DUPLICATE = -1  # the batch was appended before (a retry)
OVER_LINES = -2  # the post would cross the attempt's line quota
OVER_BYTES = -4  # ... its byte quota
FIRST_TIME = -1  # added to OVER_*: the first refusal of this attempt (say so in the job's log, once)

# Appends a post once and within the attempt's quota, atomically (a retry racing its lost original cannot double
# it, and two posts racing cannot both squeeze under the quota). KEYS: stream, batches set, usage hash.
# ARGV: batch id ('' for none), MAXLEN, TTL, attempt, max lines (0: none), max bytes (0: none), this post's bytes,
# then 4 per line (attempt, stream, text, ts). Returns the lines added, or one of the negative codes above.
_APPEND = """
local batch, attempt = ARGV[1], ARGV[4]
if batch ~= '' and redis.call('SISMEMBER', KEYS[2], batch) == 1 then return -1 end
local n_lines = (#ARGV - 7) / 4
local max_lines, max_bytes, post_bytes = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if max_lines > 0 or max_bytes > 0 then
  local lines = tonumber(redis.call('HGET', KEYS[3], attempt .. ':lines') or '0')
  local bytes = tonumber(redis.call('HGET', KEYS[3], attempt .. ':bytes') or '0')
  local over = 0
  if max_lines > 0 and lines + n_lines > max_lines then over = -2
  elseif max_bytes > 0 and bytes + post_bytes > max_bytes then over = -4 end
  if over ~= 0 then return over - redis.call('HSETNX', KEYS[3], attempt .. ':over', '1') end
end
if batch ~= '' then
  redis.call('SADD', KEYS[2], batch)
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if max_lines > 0 or max_bytes > 0 then  -- the worker's lines count; the platform's own notes do not
  redis.call('HINCRBY', KEYS[3], attempt .. ':lines', n_lines)
  redis.call('HINCRBY', KEYS[3], attempt .. ':bytes', post_bytes)
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
for i = 8, #ARGV, 4 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'attempt', ARGV[i], 'stream', ARGV[i + 1],
             'text', ARGV[i + 2], 'ts', ARGV[i + 3])
end
return n_lines
"""


def append(
    r: redis.Redis,
    job_id: str,
    attempt: int,
    lines: Iterable[Mapping[str, Any]],
    batch: int | str | None = None,
    *,
    max_lines: int = 0,
    max_bytes: int = 0,
) -> int:
    """XADD each line; call only after the attempt's fence check. With ``batch`` (the worker's sequence
    number), a batch already appended is skipped (returns ``DUPLICATE``): log posts are retried safely. With
    ``max_lines`` / ``max_bytes`` (the attempt's quota, 0: none) a post that would cross it adds nothing and
    returns ``OVER_LINES`` or ``OVER_BYTES`` (plus ``FIRST_TIME`` for the attempt's first refusal)."""
    args: list[Any] = ["" if batch is None else f"{attempt}:{batch}", MAXLEN, END_TTL_S, str(attempt),
                       max_lines, max_bytes, 0]
    size = 0
    for line in lines:
        text = str(line.get("text", ""))
        size += len(text.encode("utf-8", "surrogatepass"))
        args += [str(attempt), str(line.get("stream") or "stdout"), text, str(line.get("ts") or time.time())]
    if len(args) == 7:
        return 0
    args[6] = size
    return int(r.eval(_APPEND, 3, stream_key(job_id), batches_key(job_id), usage_key(job_id), *args))


def system_line(r: redis.Redis, job_id: str, attempt: int, text: str) -> None:
    append(r, job_id, attempt, [{"stream": "system", "text": text}])


def mark_end(r: redis.Redis, job_id: str, state: str) -> None:
    """Tell live readers the job has ended (they close with ``event: end``)."""
    key = stream_key(job_id)
    pipe = r.pipeline(transaction=False)
    pipe.xadd(key, {"end": "1", "state": state, "ts": str(time.time())}, maxlen=MAXLEN, approximate=True)
    pipe.expire(key, END_TTL_S)
    pipe.execute()


def _decode(fields: Mapping[Any, Any] | None) -> dict[str, str]:
    if fields is None:  # a trimmed entry
        return {}
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }


def _entry(entry_id: Any, f: Mapping[str, str], attempt: int | None = None) -> dict[str, Any]:
    try:
        ts: float | None = float(f["ts"])
    except (KeyError, ValueError):
        ts = None
    stream = f.get("stream") or "stdout"
    return {
        "id": entry_id if isinstance(entry_id, str) else cast(bytes, entry_id).decode(),
        "attempt": int(f.get("attempt") or 0) if attempt is None else attempt,
        "ts": ts,
        "stream": stream if stream in ("stdout", "stderr", "system") else "stdout",
        "text": f.get("text", ""),
    }


def read_attempt(r: redis.Redis, job_id: str, attempt: int) -> list[str]:
    return [e["text"] for e in read_attempt_entries(r, job_id, attempt)]


def read_attempt_entries(r: redis.Redis, job_id: str, attempt: int) -> list[dict[str, Any]]:
    """The attempt's lines still in Redis, as ``LogEntry`` dicts."""
    out: list[dict[str, Any]] = []
    last = "-"
    while True:
        batch = r.xrange(stream_key(job_id), min=last, max="+", count=5000)
        if last != "-" and batch:
            batch = batch[1:]  # xrange is inclusive of its start id
        if not batch:
            break
        for _entry_id, raw in batch:
            f = _decode(raw)
            if f.get("attempt") == str(attempt) and "end" not in f:
                out.append(_entry(_entry_id, f, attempt))
        last_id = batch[-1][0]
        last = last_id if isinstance(last_id, str) else cast(bytes, last_id).decode()
    return out


def logs_key(user_id: str, job_id: str, attempt: int) -> str:
    return attempt_key(user_id, job_id, attempt, "logs.txt")


def entries_key(user_id: str, job_id: str, attempt: int) -> str:
    return attempt_key(user_id, job_id, attempt, "logs.jsonl")


def persist(r: redis.Redis, storage: Storage, user_id: str, job_id: str, attempt: int) -> list[dict[str, Any]]:
    """Write the attempt's lines to ``attempts/{n}/logs.txt`` and ``logs.jsonl`` so they outlive Redis.
    Returns the entries."""
    entries = read_attempt_entries(r, job_id, attempt)
    lines = [e["text"] for e in entries]
    storage.put_bytes(entries_key(user_id, job_id, attempt),
                      "".join(json.dumps({k: v for k, v in e.items() if k != "id"}) + "\n" for e in entries).encode())
    storage.put_bytes(logs_key(user_id, job_id, attempt), ("\n".join(lines) + ("\n" if lines else "")).encode())
    return entries


def stderr_tail(entries: list[dict[str, Any]], n: int = 20) -> list[str]:
    """The last ``n`` lines the attempt wrote to stderr."""
    return [e["text"] for e in entries if e.get("stream") == "stderr"][-n:]


def _stored_entries(storage: Storage, user_id: str, job_id: str, n: int) -> list[dict[str, Any]] | None:
    try:
        raw = storage.get_bytes(entries_key(user_id, job_id, n)).decode("utf-8", "replace")
    except ObjectNotFound:
        try:
            text = storage.get_bytes(logs_key(user_id, job_id, n)).decode("utf-8", "replace")
        except ObjectNotFound:
            return None
        return [{"id": None, "attempt": n, "ts": None, "stream": "stdout", "text": t} for t in text.splitlines()]
    out = []
    for line in raw.splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append({"id": None, "attempt": n, "ts": e.get("ts"), "stream": e.get("stream") or "stdout",
                    "text": str(e.get("text", ""))})
    return out


def full_entries(
    r: redis.Redis, storage: Storage, user_id: str, job_id: str, attempts: list[tuple[int, bool]]
) -> list[dict[str, Any]]:
    """All attempts' lines as ``LogEntry`` dicts: persisted ones from storage, live ones from Redis."""
    out: list[dict[str, Any]] = []
    for n, persisted in attempts:
        found = _stored_entries(storage, user_id, job_id, n) if persisted else None
        out.extend(found if found is not None else read_attempt_entries(r, job_id, n))
    return out


def _stamp(ts: float | None) -> str:
    if ts is None:
        return " " * 24
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def full_text(
    r: redis.Redis, storage: Storage, user_id: str, job_id: str, attempts: list[tuple[int, bool]],
    timestamps: bool = False,
) -> str:
    """All attempts' logs: persisted ones from storage, live ones from Redis. With ``timestamps`` each line
    starts with its UTC time (ISO 8601)."""
    parts: list[str] = []
    for n, persisted in attempts:
        if len(attempts) > 1:
            parts.append(f"----- attempt {n} -----\n")
        text = None
        if timestamps:
            found = _stored_entries(storage, user_id, job_id, n) if persisted else None
            entries = found if found is not None else read_attempt_entries(r, job_id, n)
            text = "".join(f"{_stamp(e['ts'])} {e['text']}\n" for e in entries)
        elif persisted:
            try:
                text = storage.get_bytes(logs_key(user_id, job_id, n)).decode("utf-8", "replace")
            except ObjectNotFound:
                text = None
        if text is None:
            lines = read_attempt(r, job_id, n)
            text = "\n".join(lines) + ("\n" if lines else "")
        parts.append(text)
    return "".join(parts)


def sse_event(data: str, event_id: str | None = None, event: str | None = None) -> str:
    out = []
    if event:
        out.append(f"event: {event}")
    if event_id:
        out.append(f"id: {event_id}")
    out.extend(f"data: {part}" for part in data.split("\n"))
    return "\n".join(out) + "\n\n"


async def sse_stream(
    redis_url: str,
    job_id: str,
    last_event_id: str | None,
    is_ended: Any,
    backlog: list[dict[str, Any]] | None = None,
    block_ms: int = 1000,
    as_json: bool = False,
) -> AsyncIterator[str]:
    """Server-sent events: one event per log line (``id`` = stream id), then ``event: end``. The data is the
    line's text, or with ``as_json`` its ``LogEntry`` as JSON.

    ``is_ended`` is an async callable checked whenever Redis is quiet, so a stream whose end marker was lost
    (Redis restarted) still closes. ``backlog`` (persisted entries) is sent first when Redis no longer has them.
    """
    import redis.asyncio as aioredis

    def data(entry: dict[str, Any]) -> str:
        return json.dumps(entry) if as_json else str(entry["text"])

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for entry in backlog or []:
            yield sse_event(data(entry))
        last = last_event_id or "0-0"
        key = stream_key(job_id)
        while True:
            resp = cast(_XRead, await client.xread({key: last}, block=block_ms, count=500))
            if not resp:
                if await is_ended():
                    # Drain anything that arrived between the read and the check, then end.
                    resp = cast(_XRead, await client.xread({key: last}, count=10_000))
                    for _, entries in resp or []:
                        for entry_id, f in entries:
                            if "end" not in f:
                                yield sse_event(data(_entry(entry_id, f)), entry_id)
                    yield sse_event("", event="end")
                    return
                yield ": keep-alive\n\n"
                continue
            for _, entries in resp:
                for entry_id, f in entries:
                    last = entry_id
                    if "end" in f:
                        yield sse_event(f.get("state", ""), entry_id, event="end")
                        return
                    yield sse_event(data(_entry(entry_id, f)), entry_id)
    finally:
        await client.aclose()
