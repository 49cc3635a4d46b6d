"""The ledger of job process groups, with real processes: what a SIGKILLed daemon leaves is killed on the next
start, and a pid the kernel gave to another program is never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from worker.leftovers import LEDGER_FILE, ProcessGroupLedger, WorkDirInUse, _boot_id, start_time
from worker.runner import JobRunner, JobSpec

# A stand-in for the daemon: the real JobRunner and ledger in a process of its own, so the test can SIGKILL it.
FAKE_DAEMON = """
import sys, textwrap
from pathlib import Path
from worker.leftovers import ProcessGroupLedger
from worker.runner import JobRunner, JobSpec

class Discard:
    def send_logs(self, lines): pass
    def send_metrics(self, records): pass
    def send_artifact(self, path, file): pass

work = Path(sys.argv[1])
spec = JobSpec.in_folder("job-1", 1, work / "jobs" / "job-1" / "1", "train.py")
spec.code_dir.mkdir(parents=True)
spec.code_dir.joinpath("train.py").write_text(sys.argv[2])
JobRunner(spec, Discard(), ledger=ProcessGroupLedger(work / "process-groups.json")).run()
"""

# The job: a grandchild in the job's process group that ignores SIGTERM and sleeps forever.
JOB = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"])
open({marker!r}, "w").write(str(grandchild.pid))
time.sleep(3600)
"""


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    return start_time(pid) is not None  # a zombie nobody reaps counts as gone


@pytest.fixture()
def sleeper():
    """A real process in a session of its own (``sleep 60``), killed at the end whatever happened."""
    procs = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(5)


def write_ledger(path: Path, groups: list[dict], owner: dict | None = None, boot_id: str | None = None) -> None:
    state = {"boot_id": boot_id or _boot_id(), "owner": owner or {"pid": None}, "groups": groups}
    path.write_text(json.dumps(state))


def test_a_sigkilled_daemons_job_group_is_killed_on_the_next_start(tmp_path, caplog):
    marker = tmp_path / "grandchild.pid"
    daemon = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, str(tmp_path), JOB.format(marker=str(marker))])
    grandchild = None
    try:
        grandchild = int(wait_for(lambda: marker.exists() and marker.read_text(), 20, "the job's grandchild"))
        recorded = json.loads((tmp_path / LEDGER_FILE).read_text())["groups"]
        assert len(recorded) == 1 and recorded[0]["pgid"] == os.getpgid(grandchild) == recorded[0]["pid"]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        leader = recorded[0]["pid"]
        wait_for(lambda: not alive(leader), 10, "the job's leader to die with the daemon (PR_SET_PDEATHSIG)")
        time.sleep(0.3)
        assert alive(grandchild), "the grandchild outlives the daemon: this is what the cleanup is for"

        caplog.set_level("WARNING", logger="worker.leftovers")
        killed = ProcessGroupLedger(tmp_path / LEDGER_FILE).kill_leftovers(grace_s=0.5)

        assert [g["pgid"] for g in killed] == [leader]
        assert not alive(grandchild), "the grandchild ignored SIGTERM; SIGKILL after the grace must have come"
        assert f"killing the leftover process group {leader}" in caplog.text and "sending SIGKILL" in caplog.text
        after = json.loads((tmp_path / LEDGER_FILE).read_text())
        assert after["groups"] == [] and after["owner"]["pid"] == os.getpid()
    finally:
        daemon.kill()
        daemon.wait(5)
        if grandchild is not None and alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_a_reused_pid_is_left_alone(tmp_path, sleeper, monkeypatch):
    stranger = sleeper()  # a program that got the pid after the recorded job died
    wait_for(lambda: start_time(stranger.pid) is not None, 5, "the sleeper")
    entry = {"pid": stranger.pid, "pgid": stranger.pid, "start_time": start_time(stranger.pid) - 1, "label": "job x"}
    write_ledger(tmp_path / LEDGER_FILE, [entry])
    sent: list[tuple[int, int]] = []  # every signal the ledger sends, seen as it is sent (no sleep, no guess)
    real_killpg = os.killpg
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: (sent.append((pgid, sig)), real_killpg(pgid, sig))[1])
    assert ProcessGroupLedger(tmp_path / LEDGER_FILE).kill_leftovers(grace_s=0.2) == []
    assert sent == [], "a process whose start time does not match the ledger must not be signalled"
    assert stranger.poll() is None
    # the same entry with the right start time is ours, and is killed
    entry["start_time"] = start_time(stranger.pid)
    write_ledger(tmp_path / LEDGER_FILE, [entry])
    assert len(ProcessGroupLedger(tmp_path / LEDGER_FILE).kill_leftovers(grace_s=2)) == 1
    assert sent[0] == (stranger.pid, signal.SIGTERM)  # the recorder sees what the ledger sends
    assert stranger.wait(5) == -signal.SIGTERM


def test_a_ledger_from_before_a_reboot_is_ignored(tmp_path, sleeper):
    proc = sleeper()
    wait_for(lambda: start_time(proc.pid) is not None, 5, "the sleeper")
    entry = {"pid": proc.pid, "pgid": proc.pid, "start_time": start_time(proc.pid)}
    write_ledger(tmp_path / LEDGER_FILE, [entry], boot_id="another-boot")
    assert ProcessGroupLedger(tmp_path / LEDGER_FILE).kill_leftovers(grace_s=0.2) == []
    assert proc.poll() is None


def test_a_running_daemon_keeps_its_work_dir(tmp_path, sleeper):
    other = sleeper()  # stands for another live daemon that wrote the ledger
    wait_for(lambda: start_time(other.pid) is not None, 5, "the sleeper")
    write_ledger(tmp_path / LEDGER_FILE, [], owner={"pid": other.pid, "start_time": start_time(other.pid)})
    with pytest.raises(WorkDirInUse, match="--work-dir"):
        ProcessGroupLedger(tmp_path / LEDGER_FILE).kill_leftovers()


def test_the_runner_records_a_group_only_while_it_runs(tmp_path):
    class Discard:
        def send_logs(self, lines): ...
        def send_metrics(self, records): ...
        def send_artifact(self, path, file): ...

    ledger_path = tmp_path / LEDGER_FILE
    spec = JobSpec.in_folder("job-2", 1, tmp_path / "attempt", "train.py")
    spec.code_dir.mkdir(parents=True)
    spec.code_dir.joinpath("train.py").write_text(textwrap.dedent(
        f"""
        import json, os
        groups = json.load(open({str(ledger_path)!r}))["groups"]
        me = {{"pid": os.getpid(), "pgid": os.getpgid(0), "label": "job job-2 attempt 1"}}
        raise SystemExit(0 if [{{k: g[k] for k in me}} for g in groups] == [me] else 3)
        """
    ))
    result = JobRunner(spec, Discard(), ledger=ProcessGroupLedger(ledger_path)).run()
    assert result.state == "succeeded", result.error  # the job saw itself in the ledger
    assert json.loads(ledger_path.read_text())["groups"] == []
