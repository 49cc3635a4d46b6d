"""How an attempt's processes start: ``python``, ``torchrun`` or a Ray cluster of the attempt's own.

The API's ``start`` answer names the launcher (read from the script, or chosen by the job's owner) and the devices
the dispatcher gave the attempt (indexes within the worker's offered group). This module turns them into the
command and the extra environment the sandbox runs; everything it starts lives inside the attempt's sandbox, so
the runner's cancel (``signal_all``) and the sandbox's teardown end every rank and the Ray cluster with it.

- ``python``: ``python <entrypoint>``, one process.
- ``torchrun``: ``python -m torch.distributed.run --standalone --nproc_per_node <devices> --tee 3 <entrypoint>``.
  ``--standalone`` rendezvous on loopback (inside bwrap that is the job's own network namespace); ``--tee 3``
  prefixes every line of rank N with ``[defaultN]:``, which ``split_rank`` turns into the log line's rank. On
  CUDA, ``CUDA_VISIBLE_DEVICES`` lists the attempt's GPUs, so local rank i uses the i-th of them; on CPU twinkle
  picks gloo. Without ``--max-restarts`` torchrun restarts nothing: one rank dying stops the others, and
  ``explain_failure`` names that rank in the attempt's error.
- ``ray``: a boot script (``RAY_BOOT``, run by the job's own interpreter in the sandbox) runs ``ray start --head``
  on loopback with ``--num-cpus``/``--num-gpus`` of the attempt's devices and a port chosen by the worker (Ray's
  GCS default 6379 is Redis's), sets ``RAY_ADDRESS`` for the script, and stops the cluster when the script ends.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "LAUNCHERS", "RAY_BOOT", "AttemptDevices", "Launch", "attempt_devices", "explain_failure", "plan_launch",
    "split_rank",
]

LAUNCHERS = ("python", "torchrun", "ray")

RAY_BOOT = r"""
import os, signal, subprocess, sys
port, cpus, gpus, temp, entry, *args = sys.argv[1:]
ray = [sys.executable, "-m", "ray.scripts.scripts"]
head = ray + ["start", "--head", "--port", port, "--node-ip-address", "127.0.0.1", "--num-cpus", cpus,
              "--num-gpus", gpus, "--temp-dir", temp, "--include-dashboard", "false", "--disable-usage-stats"]
print(f"[twinkle] starting the attempt's Ray cluster: {cpus} CPUs, {gpus} GPUs, 127.0.0.1:{port}", flush=True)
for tries in range(3):  # Ray gives its raylet a fixed 30 s to register: a busy machine can miss it, and retry
    started = subprocess.run(head, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if started.returncode == 0:
        break
    subprocess.run(ray + ["stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"[twinkle] ray start failed (try {tries + 1} of 3)", file=sys.stderr, flush=True)
if started.returncode:  # its banner is noise when it works, and the reason when it does not
    print(started.stdout[-4000:], file=sys.stderr)
    print(f"[twinkle] ray start failed (exit code {started.returncode})", file=sys.stderr, flush=True)
    sys.exit(started.returncode)
os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
child = subprocess.Popen([sys.executable, entry, *args])
def forward(sig, _frame):
    child.send_signal(sig)
signal.signal(signal.SIGTERM, forward)
code = child.wait()
subprocess.run(ray + ["stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass(frozen=True)
class AttemptDevices:
    """The devices given to one attempt, from ``StartResponse.devices``."""

    cuda: tuple[int, ...] = ()
    cpu: int = 0
    other: int = 0

    @property
    def count(self) -> int:
        return len(self.cuda) + self.cpu + self.other


def attempt_devices(
    given: Sequence[dict], fallback_cuda: Sequence[int] = (), fallback_ranks: int = 1
) -> AttemptDevices:
    """Sum the groups the API gave; an API older than device pools gives none: the worker's whole offer."""
    if not given:
        if fallback_cuda:
            return AttemptDevices(cuda=tuple(fallback_cuda))
        return AttemptDevices(cpu=max(1, fallback_ranks))
    cuda: list[int] = []
    cpu = other = 0
    for g in given:
        devices = [int(d) for d in g.get("devices") or []]
        kind = str(g.get("device_type", "")).lower()
        if kind in ("cuda", "gpu"):
            cuda.extend(d for d in devices if d not in cuda)
        elif kind == "cpu":
            cpu += len(devices)
        else:
            other += len(devices)
    return AttemptDevices(cuda=tuple(cuda), cpu=cpu, other=other)


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    describe: str = ""
    ranks: int = 1


def plan_launch(
    launcher: str, python: str, entrypoint: str, devices: AttemptDevices, *, ray_port: int | None = None,
    args: Sequence[str] = (),
) -> Launch:
    """The command and extra environment of one attempt. ``ray_port``: a free port for the Ray head."""
    env: dict[str, str] = {}
    if devices.cuda:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices.cuda)
    n = max(1, devices.count)
    if launcher in ("torchrun", "ray") and not devices.cuda:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # one machine: gloo meets on loopback
    if launcher == "torchrun":
        # --local-addr: the sandbox's hostname resolves nowhere (no network), and the ranks must meet on loopback
        argv = [python, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1",
                "--nproc_per_node", str(n), "--tee", "3",
                entrypoint, *args]
        return Launch(argv, env, f"torchrun --nproc_per_node {n} {entrypoint}", n)
    if launcher == "ray":
        if ray_port is None:
            raise ValueError("a Ray launch needs a port for its head")
        cpus = max(1, devices.cpu + len(devices.cuda) + devices.other)  # every GPU actor needs a CPU to schedule
        temp = f"/tmp/twk-ray-{ray_port}"  # short: Ray's socket paths must stay under 107 bytes
        argv = [python, "-c", RAY_BOOT, str(ray_port), str(cpus), str(len(devices.cuda)), temp, entrypoint, *args]
        env["TWINKLE_RAY_NUM_CPUS"] = str(cpus)
        return Launch(argv, env, f"ray ({cpus} CPUs, {len(devices.cuda)} GPUs) {entrypoint}", n)
    return Launch([python, entrypoint, *args], env, f"python {entrypoint}", 1)


_RANK_PREFIX = re.compile(r"^\[default(\d+)\]:")


def split_rank(text: str) -> tuple[int | None, str]:
    """``"[default1]:loss 0.5"`` (torchrun's tee) -> ``(1, "loss 0.5")``; other lines ``(None, text)``."""
    m = _RANK_PREFIX.match(text)
    if m is None:
        return None, text
    return int(m.group(1)), text[m.end():]


_ROOT_CAUSE = re.compile(
    r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.DOTALL
)


def explain_failure(torchrun_stderr: str) -> tuple[int, str] | None:
    """From torchrun's failure summary: ``(rank, "exit code 3" | "killed by signal SIGKILL")`` of the first rank
    that failed ("Root Cause"), or ``None`` when the text has no summary."""
    at = torchrun_stderr.find("Root Cause")
    if at < 0:
        return None
    m = _ROOT_CAUSE.search(torchrun_stderr, at)
    if m is None:
        return None
    rank, code = int(m.group(1)), int(m.group(2))
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return rank, f"killed by signal {name}"
    return rank, f"exit code {code}"
