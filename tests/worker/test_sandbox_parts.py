"""The sandbox's pieces without starting a job: bwrap's command line (GPUs, binds, env), the token file, the
settings' isolation rules, cgroup v2 files (on a stand-in folder: this machine has cgroup v1), limit formatting."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from worker.sandbox import LaunchRequest, Limits, bwrap_argv, format_bytes, gpu_device_nodes
from worker.sandbox.bwrap import find_bwrap
from worker.sandbox.limits import CgroupV2, folder_usage
from worker.settings import WorkerSettings, read_token_file


def request(tmp_path: Path, **kw) -> LaunchRequest:
    attempt = tmp_path / "work" / "jobs" / "j" / "1"
    (attempt / "code").mkdir(parents=True, exist_ok=True)
    (attempt / "tmp").mkdir(exist_ok=True)
    base = dict(argv=["/usr/bin/python3", "train.py"], cwd=attempt / "code", env={"HOME": str(attempt)},
                attempt_dir=attempt, tmp_dir=attempt / "tmp")
    return LaunchRequest(**{**base, **kw})


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_bwrap_argv_namespaces_env_and_the_only_writable_folder(tmp_path):
    req = request(tmp_path, env={"HOME": "/h", "TWINKLE_JOB_ID": "j"})
    argv = bwrap_argv("/usr/bin/bwrap", req)
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
                 "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in argv, flag
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert ("TWINKLE_JOB_ID", "j") in pairs(argv, "--setenv") and ("USER", "twinkle") in pairs(argv, "--setenv")
    # writable: the attempt folder, and its tmp as /tmp; nothing else is bound read-write
    assert pairs(argv, "--bind") == [(str(req.tmp_dir), "/tmp"), (str(req.attempt_dir), str(req.attempt_dir))]
    assert "--dev-bind" not in argv and "--dev-bind-try" not in argv  # no GPU asked for, no device node
    assert argv[argv.index("--remount-ro") + 1] == "/"
    assert argv[argv.index("--") + 1 :] == req.argv
    assert not [src for src, _ in pairs(argv, "--ro-bind-try") if src.startswith("/etc/") and "shadow" in src]


def test_read_only_paths_never_expose_home_root_or_the_worker_folders(tmp_path):
    req = request(tmp_path, read_only=[Path("/"), Path.home(), tmp_path / "work", tmp_path, Path("/usr/lib")])
    ro = [src for src, _ in pairs(bwrap_argv("bwrap", req), "--ro-bind-try")]
    assert "/usr/lib" in ro
    for hidden in ("/", str(Path.home()), str(tmp_path / "work"), str(tmp_path)):
        assert hidden not in ro, hidden


def test_gpus_get_only_their_device_nodes_and_cuda_numbering_to_match(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm"):
        (dev / name).touch()
    assert gpu_device_nodes([1, 3], dev) == [str(dev / "nvidia1"), str(dev / "nvidia3"), str(dev / "nvidiactl"),
                                              str(dev / "nvidia-uvm")]
    assert gpu_device_nodes([], dev) == []

    req = request(tmp_path, gpus=[2, 3], env={"CUDA_VISIBLE_DEVICES": "2,3"})
    argv = bwrap_argv("bwrap", req)
    nodes = [src for src, _ in pairs(argv, "--dev-bind-try")]
    assert "/dev/nvidia2" in nodes and "/dev/nvidia3" in nodes
    assert "/dev/nvidia0" not in nodes and "/dev/nvidia1" not in nodes
    env = dict(pairs(argv, "--setenv"))
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_runner_hands_the_sandbox_the_gpus_of_the_attempt():
    from worker.runner import _gpu_indices

    assert _gpu_indices("0,1") == [0, 1] and _gpu_indices(None) == [] and _gpu_indices("") == []


def test_shm_is_size_limited_by_the_memory_limit(tmp_path):
    argv = bwrap_argv("bwrap", request(tmp_path), shm_bytes=1 << 30)
    j = argv.index("--size")
    assert argv[j : j + 4] == ["--size", str(1 << 30), "--tmpfs", "/dev/shm"]


def test_token_file_must_be_private(tmp_path):
    f = tmp_path / "token"
    f.write_text("twk_w_secret\n")
    f.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_token_file(f)
    f.chmod(0o600)
    assert read_token_file(f) == "twk_w_secret"
    assert WorkerSettings(token_file=f).token_value() == "twk_w_secret"
    with pytest.raises(ValueError, match="cannot read"):
        read_token_file(tmp_path / "missing")


def test_isolation_none_needs_an_explicit_trusted_pool():
    with pytest.raises(ValueError, match="trusted-pool"):
        WorkerSettings(isolation="none")
    assert WorkerSettings(isolation="none", trusted_pool=True).isolation == "none"
    assert WorkerSettings().isolation == "bwrap"


def test_limits_from_settings():
    limits = WorkerSettings(memory_limit_gb=8, pids_limit=100, disk_limit_gb=0, cpu_limit=2).limits()
    assert limits == Limits(memory_bytes=8 << 30, pids=100, cpus=2, disk_bytes=None)
    assert WorkerSettings().limits().memory_bytes > 0  # a default: 80% of this machine
    assert format_bytes(8 << 30) == "8 GiB" and format_bytes(512 << 20) == "512 MiB"


def test_cgroup_v2_files_written_for_an_attempt(tmp_path):
    """The files a delegated cgroup gets (a stand-in folder: no cgroup v2 on this machine)."""
    group = CgroupV2(tmp_path)
    path = group.create(Limits(memory_bytes=8 << 30, pids=64, cpus=1.5))
    # a stand-in folder has no interface files, so only those that are always written exist
    assert (path / "memory.max").read_text() == str(8 << 30)
    assert (path / "pids.max").read_text() == "64"
    argv = CgroupV2.enter_argv(path, ["bwrap", "x"])
    assert argv[:3] == ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"'] and argv[3] == str(path / "cgroup.procs")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert CgroupV2.events(path, "memory.events")["oom_kill"] == 1


def test_cgroup_v2_absent_says_why():
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("this machine has cgroup v2")
    assert CgroupV2.find() is None and "cgroup v2" in CgroupV2.why_not


def test_folder_usage_counts_allocated_blocks(tmp_path):
    (tmp_path / "a").write_bytes(os.urandom(1 << 20))
    (tmp_path / "sparse").open("wb").truncate(1 << 30)  # 1 GiB that uses no blocks
    assert (1 << 20) <= folder_usage(tmp_path) < (2 << 20)


def test_a_failed_heartbeat_is_one_line_not_a_traceback(tmp_path, caplog):
    """The API is down: each beat logs one warning without a traceback, and the loop goes on."""
    import threading

    from worker.client import WorkerClient
    from worker.daemon import WorkerDaemon
    from worker.sandbox import NoSandbox

    settings = WorkerSettings(token="twk_w_x", work_dir=tmp_path, heartbeat_interval_s=0.05, device_type="cpu")
    daemon = WorkerDaemon(settings, client=WorkerClient("http://127.0.0.1:9", "twk_w_x", retries=0), sandbox=NoSandbox())
    daemon.worker_id = "w1"
    caplog.set_level(logging.INFO, logger="worker.daemon")
    t = threading.Thread(target=daemon._heartbeat_loop, daemon=True)
    t.start()
    threading.Event().wait(0.6)
    daemon._stop.set()
    t.join(5)
    failed = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert len(failed) >= 2
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in failed)
    assert "ConnectError" in failed[0].getMessage()


@pytest.mark.parametrize("isolation", ["bwrap", "container"])
def test_registration_sends_the_isolation(tmp_path, isolation):
    """A real HTTP server stands in for the API's register route and keeps the body the daemon sent."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from worker.daemon import WorkerDaemon
    from worker.sandbox import create_sandbox

    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            reply = json.dumps({"worker_id": "w1", "heartbeat_interval_s": 1, "lease_s": 3}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = WorkerSettings(server_url=f"http://127.0.0.1:{server.server_address[1]}", token="twk_w_x",
                                  work_dir=tmp_path, device_type="cpu", isolation=isolation)
        WorkerDaemon(settings, sandbox=create_sandbox(isolation)).register(max_wait_s=0)
    finally:
        server.shutdown()
    assert bodies[0]["isolation"] == isolation and bodies[0]["device_groups"]
    assert bodies[0]["probe"]["devices"][-1]["device_type"] == "cpu", "the daemon sends its hardware probe"


def test_the_worker_refuses_to_start_without_user_namespaces_and_says_what_to_do(tmp_path):
    """A bwrap that fails the way Debian's does with user namespaces off (a stand-in script)."""
    import subprocess
    import sys

    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'bubblewrap 0.8.0'; exit 0; }\n"
                    "echo 'bwrap: No permissions to creating new namespace' >&2; exit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "TWINKLE_WORKER_BWRAP_PATH": str(fake), "TWINKLE_WORKER_TOKEN_FILE": str(tmp_path / "t")}
    (tmp_path / "t").write_text("twk_w_x")
    (tmp_path / "t").chmod(0o600)
    env.pop("TWINKLE_WORKER_TOKEN", None)
    r = subprocess.run([sys.executable, "-m", "worker.main", "--server", "http://127.0.0.1:9", "--device-type", "cpu",
                        "--work-dir", str(tmp_path / "w")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 6, r.stderr
    assert "cannot create a user namespace" in r.stderr and "unprivileged_userns_clone" in r.stderr, r.stderr

    doctor = subprocess.run([sys.executable, "-m", "worker.main", "doctor"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert doctor.returncode == 6 and "NOT AVAILABLE" in doctor.stdout


def test_doctor_prints_the_isolation_found():
    import subprocess
    import sys

    if find_bwrap() is None:
        pytest.skip("bubblewrap is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINKLE_WORKER_")}
    r = subprocess.run([sys.executable, "-m", "worker.main", "doctor"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    for expected in ("isolation: bwrap", "bwrap_version: bubblewrap", "user_namespaces: ok", "cgroup_v2_delegated:",
                     "limits per attempt: memory"):
        assert expected in r.stdout, r.stdout


def test_forked_children_sharing_memory_are_counted_once():
    """Ten forks of a process holding 100 MiB: RSS says ~1 GiB, PSS (what the limit uses) ~100 MiB."""
    import subprocess
    import sys
    import time

    from worker.leftovers import group_members
    from worker.sandbox.limits import process_memory, process_rss

    code = ("import os, time\nb = bytearray(100 << 20)\nfor _ in range(10):\n    if os.fork() == 0:\n"
            "        time.sleep(30); os._exit(0)\nprint('ready', flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.2)
        pids = list(group_members(proc.pid))
        assert len(pids) == 11
        rss = sum(process_rss(p) for p in pids)
        pss = sum(process_memory(p) for p in pids)
        assert rss > 900 << 20 and pss < 300 << 20, (rss >> 20, pss >> 20)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_a_token_on_argv_is_gone_after_start(tmp_path):
    """The deprecated --token: a warning, then the daemon re-executes itself without it in its argv."""
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINKLE_WORKER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.main", "--server", "http://127.0.0.1:9", "--token", "twk_w_ARGV-SENTINEL",
         "--device-type", "cpu", "--work-dir", str(tmp_path / "w"), "--health-port", "0", "--isolation", "none",
         "--trusted-pool"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:  # the daemon retries the unreachable API: it is up when it says so
            lines.append(proc.stderr.readline())
            if "API not reachable" in lines[-1]:
                break
        assert "API not reachable" in lines[-1], "".join(lines)
        assert b"ARGV-SENTINEL" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"ARGV-SENTINEL" not in Path(f"/proc/{proc.pid}/environ").read_bytes()
        text = "".join(lines)
        assert "--token is deprecated" in text and "isolation 'none'" in text
    finally:
        proc.kill()
        proc.wait()
