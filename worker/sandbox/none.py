"""No sandbox of the worker's own: the job runs as the worker's user, in a process group of its own.

* ``none``: only for a trusted pool (the worker refuses it without ``--no-sandbox-i-trust-every-job``); the job
  can read whatever the worker's user can, and a ``setsid`` child escapes the process group.
* ``container``: the same mechanics, declared for a worker whose pod or VM is the sandbox (gVisor, Kata, a pod
  with its own network policy); the platform shows it, the worker does not add to it.

Limits still apply: the watcher polls the process group, the disk watcher the attempt folder.
"""

from __future__ import annotations

import signal

from worker.leftovers import group_members
from worker.sandbox.base import Isolation, LaunchRequest, Sandbox, SandboxedProcess, killpg, popen
from worker.sandbox.limits import LimitWatcher, child_setup, cpu_affinity_prefix

__all__ = ["ContainerSandbox", "NoSandbox"]

class GroupProcess(SandboxedProcess):
    """The job leads a process group of its own (``start_new_session``); signals go to the whole group."""

    watcher: LimitWatcher | None = None

    def pids(self) -> list[int]:
        return list(group_members(self.pid))

    def signal_all(self, sig: int) -> None:
        killpg(self.pid, sig)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        killpg(self.pid, signal.SIGKILL)


class NoSandbox(Sandbox):
    isolation: Isolation = "none"

    def launch(self, request: LaunchRequest) -> GroupProcess:
        argv = cpu_affinity_prefix(request.limits.cpus) + list(request.argv)
        handle = GroupProcess(popen(argv, request, request.env, preexec=child_setup(request.limits)))
        handle.watcher = LimitWatcher(handle, request.limits, request.attempt_dir).start()
        return handle

    def describe(self) -> dict:
        return {
            "isolation": self.isolation,
            "warning": "jobs run as this user with its files, network and processes in reach; trusted pools only",
            "limits_enforced_by": "watcher (process group: pids, memory), CPU affinity, RLIMIT_FSIZE",
        }


class ContainerSandbox(NoSandbox):
    isolation: Isolation = "container"

    def describe(self) -> dict:
        return {**super().describe(), "warning": "the container or VM this worker runs in is the only sandbox"}
