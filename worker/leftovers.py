"""A ledger of the job process groups a daemon started, so that the next daemon kills what a SIGKILLed one left.

Each job runs in a session of its own (its process group id is the child's pid) and the child dies with the
daemon (``PR_SET_PDEATHSIG``), but what the child started (torchrun ranks, data loader workers) stays in the group
and keeps the GPU. The ledger is one JSON file under the work dir; each entry holds the leader's pid, the pgid and
the leader's start time (field 22 of ``/proc/<pid>/stat``, clock ticks since boot), with the boot id of the
machine, so a pid or pgid the kernel has since handed to another program is never signalled:

* the leader is alive with the recorded start time: the group is ours;
* the leader's pid is alive with another start time: the number was reused, and (the kernel never reuses a pid
  while a group of that id exists) nothing of ours is left: leave it alone;
* the leader is gone but processes remain in the group: ours when none of them started before the leader did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

__all__ = ["LEDGER_FILE", "ProcessGroupLedger", "WorkDirInUse", "group_members", "start_time"]

log = logging.getLogger(__name__)

LEDGER_FILE = "process-groups.json"


class WorkDirInUse(RuntimeError):
    """Another live daemon keeps its ledger in this work dir."""


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or ``None`` for a gone or zombie process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return None if fields[0] in ("Z", "X") else fields


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or ``None`` when it is gone (a zombie counts as gone)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22 of the whole line


def group_members(pgid: int) -> dict[int, int]:
    """``{pid: start time}`` of the live processes whose process group is ``pgid``."""
    members = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[2]) == pgid:  # field 5: pgrp
                members[int(entry.name)] = int(fields[19])
    return members


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # pragma: no cover - not Linux
        return None


class ProcessGroupLedger:
    """The process groups of this daemon's running jobs, mirrored to ``path`` on every change."""

    def __init__(self, path: Path):
        self.path = path
        self._groups: dict[int, dict] = {}
        self._lock = threading.Lock()

    def add(self, pid: int, label: str) -> None:
        """Record the group a job's child leads (call right after it was started)."""
        started = start_time(pid)
        if started is None:  # already gone: nothing to clean up later
            return
        with self._lock:
            self._groups[pid] = {"pid": pid, "pgid": os.getpgid(pid), "start_time": started, "label": label}
            self._write()

    def remove(self, pid: int) -> None:
        with self._lock:
            if self._groups.pop(pid, None) is not None:
                self._write()

    def _write(self) -> None:
        me = {"pid": os.getpid(), "start_time": start_time(os.getpid())}
        state = {"boot_id": _boot_id(), "owner": me, "groups": list(self._groups.values())}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.path)  # a reader sees the old ledger or the new one, never half of one
        except OSError as exc:  # a full disk must not fail a job; only the cleanup after a SIGKILL is lost
            log.error("could not write %s (%s): a job left by a killed daemon will not be cleaned up", self.path, exc)

    def kill_leftovers(self, grace_s: float = 5.0) -> list[dict]:
        """Kill the recorded groups that are still alive (SIGTERM, SIGKILL after ``grace_s``); returns them.

        Raises ``WorkDirInUse`` when the daemon that wrote the ledger is still running.
        """
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            state = {}
        except ValueError:
            log.warning("ignoring an unreadable %s", self.path)
            state = {}
        owner = state.get("owner") or {}
        if owner.get("pid") not in (None, os.getpid()) and start_time(owner["pid"]) == owner.get("start_time"):
            raise WorkDirInUse(
                f"another twinkle-worker (pid {owner['pid']}) is running with work dir {self.path.parent}; "
                "stop it, or give this worker a work dir of its own (--work-dir)"
            )
        same_boot = state.get("boot_id") == _boot_id()
        ours = [g for g in state.get("groups", []) if same_boot and self._still_ours(g)]
        for group in ours:
            log.warning(
                "killing the leftover process group %s of %s (pids %s) from a daemon that did not stop cleanly",
                group["pgid"], group.get("label", "a job"), sorted(group_members(group["pgid"])),
            )
            self._signal(group, signal.SIGTERM)
        for group in self._wait_gone(ours, grace_s):
            log.warning("process group %s ignored SIGTERM; sending SIGKILL", group["pgid"])
            self._signal(group, signal.SIGKILL)
        for group in self._wait_gone(ours, 5.0):  # SIGKILL is delivered asynchronously; free the devices first
            survivors = sorted(group_members(group["pgid"]))
            log.error("process group %s survived SIGKILL (pids %s)", group["pgid"], survivors)
        with self._lock:
            self._write()  # this daemon owns the ledger now; the old entries are dealt with
        return ours

    @classmethod
    def _wait_gone(cls, groups: list[dict], timeout_s: float) -> list[dict]:
        """Wait up to ``timeout_s`` for the groups to die; returns those still alive."""
        deadline = time.monotonic() + timeout_s
        while (left := [g for g in groups if cls._still_ours(g)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    @staticmethod
    def _still_ours(group: dict) -> bool:
        leader = start_time(group["pid"])
        if leader is not None:
            return leader == group["start_time"]
        members = group_members(group["pgid"])
        return bool(members) and min(members.values()) >= group["start_time"]

    @staticmethod
    def _signal(group: dict, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group["pgid"], sig)
