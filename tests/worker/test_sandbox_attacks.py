"""Each attack from issue 12, run by a real job in real bubblewrap (the runner and sandbox the worker uses).

Where it is cheap, the same attack also runs without the sandbox (``none``) and succeeds there: that shows the
test can fail, and that it is the sandbox that stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.worker.test_runner import ListSink
from worker.runner import JobRunner, JobSpec
from worker.sandbox import BwrapSandbox, Limits, NoSandbox
from worker.sandbox.bwrap import find_bwrap

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed (scripts/setup.sh)")

MARK = "31337.25"  # a sleep length no other program uses: found in a host /proc scan, it is one of ours


@pytest.fixture(scope="module")
def bwrap() -> BwrapSandbox:
    return BwrapSandbox()


def run_job(tmp_path: Path, script: str, sandbox, limits: Limits | None = None, name: str = "j"):
    folder = tmp_path / "work" / "jobs" / name / "1"
    spec = JobSpec.in_folder(name, 1, folder, "train.py")
    spec.code_dir.mkdir(parents=True, exist_ok=True)
    (spec.code_dir / "train.py").write_text(textwrap.dedent(script))
    sink = ListSink()
    result = JobRunner(spec, sink, flush_interval_s=0.1, kill_grace_s=1, sandbox=sandbox, limits=limits).run()
    return result, sink


def host_pids_with(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture()
def donor(tmp_path):
    """The worker user's world: a home with keys, a worker folder with a token and a ledger."""
    home = tmp_path / "donor-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE-KEY-SENTINEL")
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("aws_secret_access_key=SENTINEL")
    token = tmp_path / "work" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("twk_w_TOKEN-SENTINEL")
    token.chmod(0o600)
    (tmp_path / "work" / "process-groups.json").write_text("{}")
    return home, token


@pytest.mark.parametrize("isolation", ["none", "bwrap"])
def test_job_reads_no_token_home_file_or_ledger(tmp_path, donor, bwrap, isolation):
    home, token = donor
    result, sink = run_job(tmp_path, f"""
        for path in [{str(token)!r}, {str(home / '.ssh/id_ed25519')!r}, {str(home / '.aws/credentials')!r},
                     {str(token.parent / 'process-groups.json')!r}]:
            try:
                print("READ", path, open(path).read())
            except OSError as exc:
                print("BLOCKED", path, type(exc).__name__)
        import os
        print("SIBLINGS", sorted(os.listdir({str(tmp_path / 'work' / 'jobs')!r})))
        """, bwrap if isolation == "bwrap" else NoSandbox())
    out = "\n".join(sink.text())
    assert result.state == "succeeded", (result, sink.text("stderr"))
    if isolation == "none":  # what a job could do before: the attack works without the sandbox
        assert "TOKEN-SENTINEL" in out and "PRIVATE-KEY-SENTINEL" in out
        return
    assert "SENTINEL" not in out and out.count("BLOCKED") == 4, out


def test_job_cannot_write_the_donors_authorized_keys(tmp_path, donor, bwrap):
    home, _ = donor
    target = home / ".ssh" / "authorized_keys"
    _, sink = run_job(tmp_path, f"""
        import os
        for path in [{str(target)!r}, os.path.expanduser("~/.ssh/authorized_keys")]:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").write("ssh-ed25519 ATTACKER")
                print("WROTE", path)
            except OSError as exc:
                print("BLOCKED", path, type(exc).__name__)
        """, bwrap)
    out = "\n".join(sink.text())
    # the donor's home is not in the sandbox: the write fails, or (the tests' tmp folders lie under /tmp) lands
    # in the attempt's own /tmp, never in the donor's file
    assert not target.exists() and not target.parent.joinpath("authorized_keys").exists(), out
    # ~ is the attempt folder: the write lands there and is deleted with it
    assert "WROTE .ssh/authorized_keys" in out  # its own folder's copy (the log shows paths relative to it)


@pytest.mark.parametrize("isolation", ["none", "bwrap"])
def test_job_sees_no_host_process_and_no_daemon_secret_in_proc(tmp_path, bwrap, isolation):
    # a stand-in daemon with the token in its argv and environment, as a worker started with --token had
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--token", "twk_w_PROC-SENTINEL"],
                              env={**os.environ, "TWINKLE_WORKER_TOKEN": "twk_w_PROC-SENTINEL"})
    try:
        _, sink = run_job(tmp_path, """
            import os
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            print("PIDS", len(pids))
            for p in pids:
                for what in ("cmdline", "environ"):
                    try:
                        if b"PROC-SENTINEL" in open(f"/proc/{p}/{what}", "rb").read():
                            print("FOUND", p, what)
                    except OSError:
                        pass
            """, bwrap if isolation == "bwrap" else NoSandbox())
    finally:
        daemon.kill()
        daemon.wait()
    out = "\n".join(sink.text())
    pids = int(next(line.split()[1] for line in sink.text() if line.startswith("PIDS")))
    if isolation == "none":
        assert "FOUND" in out and pids > 5
        return
    assert "FOUND" not in out and pids <= 3, out  # bwrap's init, the job, nothing else


@pytest.mark.parametrize("isolation", ["none", "bwrap"])
def test_job_cannot_connect_to_the_api_redis_or_the_lan(tmp_path, bwrap, isolation):
    api = socket.socket()
    api.bind(("127.0.0.1", 0))
    api.listen()
    redis_port = int(os.environ.get("TWINKLE_TEST_REDIS_URL", "redis://127.0.0.1:6379").rsplit(":", 1)[1].split("/")[0])
    lan = [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    targets = [("127.0.0.1", api.getsockname()[1]), ("127.0.0.1", redis_port), ("169.254.169.254", 80)]
    targets += [(ip, api.getsockname()[1]) for ip in lan if not ip.startswith("127.")]
    try:
        _, sink = run_job(tmp_path, f"""
            import socket
            for host, port in {targets!r}:
                try:
                    socket.create_connection((host, port), timeout=2).close()
                    print("CONNECTED", host, port)
                except OSError as exc:
                    print("BLOCKED", host, port, type(exc).__name__)
            """, bwrap if isolation == "bwrap" else NoSandbox())
    finally:
        api.close()
    out = "\n".join(sink.text())
    if isolation == "none":
        assert f"CONNECTED 127.0.0.1 {redis_port}" in out
        return
    assert "CONNECTED" not in out and out.count("BLOCKED") == len(targets), out


@pytest.mark.parametrize("isolation", ["none", "bwrap"])
def test_a_double_forked_setsid_child_does_not_outlive_the_attempt(tmp_path, bwrap, isolation):
    marker = MARK + ("1" if isolation == "none" else "2")  # still a number sleep accepts
    try:
        result, sink = run_job(tmp_path, f"""
            import os, time
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execvp("sleep", ["sleep", "{marker}"])
                os._exit(0)
            time.sleep(0.5)
            print("left a child behind")
            """, bwrap if isolation == "bwrap" else NoSandbox())
        assert result.state == "succeeded", (result, sink.text("stderr"))
        time.sleep(0.3)
        left = host_pids_with(marker)
        if isolation == "none":  # the escape the sandbox is for
            assert left
        else:
            assert left == []
    finally:
        for pid in host_pids_with(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_fork_bomb_ends_the_attempt_at_the_pids_limit(tmp_path, bwrap):
    t0 = time.monotonic()
    result, _ = run_job(tmp_path, f"""
        import os, time
        for i in range(10_000):
            try:
                if os.fork() == 0:
                    os.execvp("sleep", ["sleep", "{MARK}"])
            except OSError:
                pass
        time.sleep(60)
        """, bwrap, Limits(pids=64))
    assert result.state == "failed" and result.error.startswith("pids limit 64 reached"), result
    assert result.limit == result.error  # reported to the API, whose end line says "attempt 1 failed: pids limit..."
    assert time.monotonic() - t0 < 30
    assert host_pids_with(MARK) == []


def test_writing_past_the_disk_limit_ends_the_attempt(tmp_path, bwrap):
    result, sink = run_job(tmp_path, """
        import os
        os.makedirs(os.environ["TWINKLE_OUTPUT_DIR"], exist_ok=True)
        with open(os.path.join(os.environ["TWINKLE_OUTPUT_DIR"], "big.bin"), "wb") as f:
            for _ in range(200):
                f.write(os.urandom(1 << 20))
                f.flush()
        print("wrote 200 MiB")
        """, bwrap, Limits(disk_bytes=20 << 20))
    assert result.state == "failed" and result.error.startswith("disk limit 20 MiB reached"), result
    assert "wrote 200 MiB" not in sink.text()


def test_many_small_files_past_the_disk_limit_end_the_attempt(tmp_path, bwrap):
    result, sink = run_job(tmp_path, """
        import os, time
        for i in range(400):
            open(f"/tmp/f{i}", "wb").write(os.urandom(256 << 10))
            time.sleep(0.01)
        time.sleep(3)
        print("done")
        """, bwrap, Limits(disk_bytes=20 << 20))
    assert result.state == "failed" and result.error.startswith("disk limit 20 MiB reached"), result
    assert "done" not in sink.text()


def test_allocating_past_the_memory_limit_ends_the_attempt(tmp_path, bwrap):
    result, sink = run_job(tmp_path, """
        import time
        hoard = []
        for _ in range(400):  # 4 GiB in 10 MiB pieces, each page touched
            hoard.append(bytearray(10 << 20))
            time.sleep(0.005)
        print("allocated 4 GiB")
        """, bwrap, Limits(memory_bytes=256 << 20))
    assert result.state == "failed" and result.error == "memory limit 256 MiB reached", result
    assert "allocated 4 GiB" not in sink.text()
    assert result.limit == "memory limit 256 MiB reached"  # the API's end line and Job.failure carry it


def test_the_next_job_finds_nothing_the_last_one_left(tmp_path, bwrap):
    run_job(tmp_path, f"""
        import os
        open("/dev/shm/left", "w").write("x")
        open("/tmp/left", "w").write("x")
        if os.fork() == 0:
            os.setsid()
            os.execvp("sleep", ["sleep", "{MARK}"])
        """, bwrap, name="first")
    _, sink = run_job(tmp_path, """
        import os
        print("SHM", os.listdir("/dev/shm"), "TMP", os.listdir("/tmp"))
        print("PIDS", len([p for p in os.listdir("/proc") if p.isdigit()]))
        print("JOBS", os.listdir(os.path.dirname(os.path.dirname(os.environ["HOME"]))))
        """, bwrap, name="second")
    out = "\n".join(sink.text())
    assert "SHM []" in out and "left" not in out and "PIDS 2" in out and "JOBS ['second']" in out, out
    assert host_pids_with(MARK) == []


def test_cancel_kills_everything_in_the_namespace(tmp_path, bwrap):
    import threading

    folder = tmp_path / "work" / "jobs" / "c" / "1"
    spec = JobSpec.in_folder("c", 1, folder, "train.py")
    spec.code_dir.mkdir(parents=True)
    (spec.code_dir / "train.py").write_text(textwrap.dedent(f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ignores the polite signal: SIGKILL after the grace
        if os.fork() == 0:
            os.setsid()
            os.execvp("sleep", ["sleep", "{MARK}"])
        print("running", flush=True)
        time.sleep(600)
        """))
    sink = ListSink()
    runner = JobRunner(spec, sink, flush_interval_s=0.1, kill_grace_s=1, sandbox=bwrap)
    threading.Thread(target=lambda: sink.got_line.wait(30) and runner.cancel(), daemon=True).start()
    result = runner.run()
    assert result.state == "cancelled"
    assert host_pids_with(MARK) == []


def test_cpu_limit_without_cgroups_pins_the_job_to_that_many_cores(tmp_path, bwrap):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: nothing to limit")
    _, sink = run_job(tmp_path, "import os; print('CORES', len(os.sched_getaffinity(0)))", bwrap, Limits(cpus=1))
    assert "CORES 1" in sink.text(), sink.text("stderr")


def test_a_job_killed_by_a_signal_is_reported_as_such(tmp_path, bwrap):
    result, _ = run_job(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", bwrap)
    assert result.state == "failed" and result.exit_code == -9 and result.error.startswith("killed by signal SIGKILL")
