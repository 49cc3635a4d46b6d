"""How ``twinkle-submit`` shows jobs: local-zone times, durations, the word for a job's state, where files landed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

__all__ = ["duration", "eta", "landed", "local_time", "parse_env", "phase", "reason"]


def local_time(value: str | None, *, now: dt.datetime | None = None) -> str:
    """An API time (ISO 8601, UTC) in the local zone with its name: ``2026-11-29 21:04:05 CET``."""
    if not value:
        return ""
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h03m``, ``1d04h``."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def phase(job: dict[str, Any]) -> str:
    """The word to show: held, queued, starting, running, stopping… (while a cancel takes effect), or the end."""
    word = str(job.get("phase") or job.get("state") or "?")
    return "stopping…" if word == "stopping" else word


def eta(job: dict[str, Any]) -> str:
    """``~21:40 CET`` when the API estimates a start (Slurm's ``squeue --start``), else empty."""
    at = job.get("expected_start_at")
    if not at:
        return ""
    when = dt.datetime.fromisoformat(at)
    local = when.astimezone()
    same_day = local.date() == dt.datetime.now().astimezone().date()
    return "~" + local.strftime("%H:%M %Z" if same_day else "%Y-%m-%d %H:%M %Z")


def reason(job: dict[str, Any], width: int = 80) -> str:
    """Why it waits (queued, held) or why it failed, on one line."""
    failure = job.get("failure")
    if failure:
        text = str(failure.get("summary") or "")
        tail = failure.get("stderr_tail") or []
        if tail:
            text += f": {tail[-1]}"
    else:
        text = str(job.get("pending_reason") or "")
    return text if len(text) <= width else text[: width - 1] + "…"


def landed(paths: Iterable[str]) -> list[str]:
    """The folders (relative) the downloaded files are in, shortest first: ``["output/last-checkpoint"]``."""
    folders = sorted({str(PurePosixPath(p).parent) for p in paths}, key=lambda f: (f.count("/"), f))
    out: list[str] = []
    for folder in folders:
        if not any(folder == o or folder.startswith(o + "/") for o in out):
            out.append(folder)
    return out


def parse_env(items: list[str]) -> dict[str, str]:
    """``["LR=1e-4", "NAME=a=b"]`` -> ``{"LR": "1e-4", "NAME": "a=b"}``; raises ``ValueError`` naming the bad one."""
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--env {item!r} is not NAME=VALUE; write e.g. --env LR=1e-4")
        env[name] = value
    return env
