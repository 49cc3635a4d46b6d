"""The real ``twinkle-worker`` (bwrap by default) and ``twinkle-scheduler up``: the token is out of every job's
reach, the job's whole tree dies with a SIGKILLed daemon, and the next job finds nothing left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.worker.test_daemon_recovery import wait_for
from tests.worker.test_sandbox_attacks import host_pids_with
from worker.sandbox.bwrap import find_bwrap

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed (scripts/setup.sh)"),
]
MARK = "31337.75"


def job_logs(stack, token: str, job_id: str) -> str:
    with stack.http(token) as c:
        return c.get(f"/jobs/{job_id}/logs").text


def test_token_out_of_reach_and_the_job_tree_dies_with_a_sigkilled_daemon(platform, tmp_path: Path):
    first = platform.start_worker("donor")  # the token comes in TWINKLE_WORKER_TOKEN, as in the Helm chart
    token = platform.worker_token()
    pid = first.popen.pid
    # the daemon re-executed itself with the token on a pipe: neither its environment nor its argv holds it
    assert token.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert "isolation bwrap" in first.log()

    user = platform.create_user()
    job = platform.submit(user, textwrap.dedent(f"""
        import os, time
        hits = []
        for p in [p for p in os.listdir("/proc") if p.isdigit()]:
            for what in ("cmdline", "environ"):
                try:
                    if {token.encode()!r} in open(f"/proc/{{p}}/{{what}}", "rb").read():
                        hits.append(p)
                except OSError:
                    pass
        print("TOKEN HITS", hits, "PIDS", len([p for p in os.listdir("/proc") if p.isdigit()]), flush=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "{MARK}"])
            os._exit(0)
        time.sleep(3600)
        """), name="holds-on")
    platform.wait_job(user, job["id"], states={"running"}, timeout=60)
    wait_for(lambda: host_pids_with(MARK), 30, "the job's setsid grandchild", platform)
    # the line reaches the API with the next log flush: wait for it rather than race it
    logs = wait_for(lambda: (t := job_logs(platform, user, job["id"])) and "TOKEN HITS" in t and t, 15, "the job's report")
    assert "TOKEN HITS [] PIDS 2" in logs, logs

    first.popen.send_signal(signal.SIGKILL)  # no chance to clean up: --die-with-parent and the pid namespace do
    first.popen.wait(10)
    wait_for(lambda: not host_pids_with(MARK), 5, "the sandbox to die with its daemon", platform)

    with platform.http(user) as c:  # else the requeued attempt would sleep on the next worker's only slot
        assert c.post(f"/jobs/{job['id']}/cancel").status_code == 200
    second = platform.start_worker("donor")
    after = platform.submit(user, textwrap.dedent("""
        import os
        print("NEXT", len([p for p in os.listdir("/proc") if p.isdigit()]), os.listdir("/dev/shm"))
        """), name="next")
    done = platform.wait_job(user, after["id"], timeout=60)
    assert done["state"] == "succeeded", (done, platform.diagnostics())
    assert "NEXT 2 []" in job_logs(platform, user, after["id"])
    assert second.alive()


@pytest.mark.e2e
def test_a_job_under_up_reads_neither_the_secret_key_nor_the_database(tmp_path):
    from tests.scheduler.test_sched_up import BIN, clean_env

    if shutil.which("twinkle-worker", path=str(BIN)) is None:
        pytest.skip("twinkle-worker is not installed")
    data = tmp_path / "data"
    script = tmp_path / "steal.py"
    script.write_text(textwrap.dedent(f"""
        import os
        for name in ("secret_key", "twinkle.db", "worker_token"):
            path = os.path.join({str(data)!r}, name)
            try:
                open(path, "rb").read()
                print("STOLE", name)
            except OSError as exc:
                print("BLOCKED", name, type(exc).__name__)
        """))
    env = clean_env()
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    r = subprocess.run(
        [str(BIN / "twinkle-scheduler"), "up", "--port", "0", "--data-dir", str(data),
         "--config-path", str(tmp_path / "config.toml"), "--submit", str(script)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    out = r.stdout + r.stderr
    log = (data / "worker.log").read_text() if (data / "worker.log").exists() else ""
    assert r.returncode == 0, out + log
    assert (data / "secret_key").exists() and "STOLE" not in out and out.count("BLOCKED") == 3, out + log
    assert "isolation bwrap" in log


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
def test_the_sandbox_works_for_an_unprivileged_worker_user(request):
    """The donor's usual case: the worker runs as a plain user (here: nobody, via setpriv) with the system
    Python, and bwrap makes its namespaces without any privilege."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip("no system python3")
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="twinkle-unpriv-"))  # pytest's own folders are 0700, closed to nobody
    folder.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    driver = textwrap.dedent(f"""
        import sys, os, textwrap
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from worker.sandbox import BwrapSandbox, LaunchRequest, Limits
        folder = Path({str(folder)!r}) / "attempt"
        (folder / "code").mkdir(parents=True)
        (folder / "tmp").mkdir()
        (folder / "code" / "t.py").write_text("import os; print('UID', os.getuid(), 'PIDS', len([p for p in os.listdir('/proc') if p.isdigit()]), 'ROOT', sorted(os.listdir('/root')) if os.path.isdir('/root') else None)")
        h = BwrapSandbox(use_cgroups=False).launch(LaunchRequest(argv=[{python!r}, "t.py"], python={python!r},
            cwd=folder / "code", env={{"PATH": "/usr/bin:/bin"}}, attempt_dir=folder, tmp_dir=folder / "tmp",
            limits=Limits(pids=32)))
        print(h.stdout.read().decode(), h.stderr.read().decode(), "RC", h.returncode())
        h.close()
        """)
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", driver],
                       capture_output=True, text=True, timeout=60, cwd="/")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "RC 0" in out, out
    assert "UID 65534 PIDS 2 ROOT None" in out, out
