"""The runner with real child processes: scrubbed env, logs, metrics, checkpoints, cancel and stale kills."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from worker.runner import JobRunner, JobSpec, StaleAttemptSignal, job_environment


class ListSink:
    """Collects what the runner sends; ``stale_after`` makes the Nth log post answer like a stale attempt."""

    def __init__(self, stale_on_logs: bool = False):
        self.lines: list[dict] = []
        self.log_posts = 0
        self.records: list[dict] = []
        self.artifacts: dict[str, bytes] = {}
        self.artifact_times: dict[str, float] = {}
        self.stale_on_logs = stale_on_logs
        self.got_line = threading.Event()

    def send_logs(self, lines):
        self.log_posts += 1
        self.lines.extend(lines)
        if any(line["stream"] == "stdout" for line in lines):
            self.got_line.set()
        if self.stale_on_logs and any(line["stream"] == "stdout" for line in lines):
            raise StaleAttemptSignal("stale")

    def send_metrics(self, records):
        self.records.extend(records)

    def send_artifact(self, path, file):
        self.artifacts[path] = Path(file).read_bytes()
        self.artifact_times.setdefault(path, time.monotonic())

    def text(self, stream="stdout") -> list[str]:
        return [line["text"] for line in self.lines if line["stream"] == stream]


def make_spec(tmp_path: Path, script: str, **kwargs) -> JobSpec:
    spec = JobSpec.in_folder("job-1", 2, tmp_path / "attempt", "train.py", **kwargs)
    spec.code_dir.mkdir(parents=True)
    (spec.code_dir / "train.py").write_text(textwrap.dedent(script))
    return spec


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it no longer runs
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_environment_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINKLE_WORKER_TOKEN", "twk_w_secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret")
    monkeypatch.setenv("TWINKLE_SCHEDULER_S3_SECRET_ACCESS_KEY", "s3-secret-2")
    monkeypatch.setenv("REDIS_URL", "redis://:pw@host:6379")
    spec = make_spec(
        tmp_path,
        """
        import json, os
        with open(os.path.join(os.environ["HOME"], "env.json"), "w") as f:  # a file: the log rewrites paths
            json.dump(dict(os.environ), f)
        """,
        assets_dir="/opt/assets",
        cuda_visible_devices="0,1",
    )
    sink = ListSink()
    result = JobRunner(spec, sink).run()
    assert result.state == "succeeded", result
    env = json.loads((spec.home_dir / "env.json").read_text())
    assert "twk_w_secret" not in json.dumps(env) and "s3-secret" not in json.dumps(env)
    assert not any(k.startswith(("TWINKLE_WORKER_", "TWINKLE_SCHEDULER_", "AWS_", "REDIS")) for k in env)
    assert env["TWINKLE_JOB_ID"] == "job-1" and env["TWINKLE_ATTEMPT"] == "2"
    assert env["TWINKLE_OUTPUT_DIR"] == str(spec.output_dir)
    assert env["TWINKLE_METRICS_FILE"] == str(spec.metrics_file)
    assert env["HOME"] == str(spec.home_dir) and env["TMPDIR"] == str(spec.tmp_dir)
    assert env["PYTHONUNBUFFERED"] == "1" and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["TWINKLE_ASSETS_DIR"] == "/opt/assets"
    allowed = {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "TWINKLE_ASSETS_DIR"}
    # the interpreter itself may add LC_CTYPE when LANG is C; nothing else is allowed in
    assert set(env) - allowed - {k for k in env if k.startswith("TWINKLE_")} <= {"LC_CTYPE"}


def test_job_environment_resume_and_defaults(tmp_path):
    spec = JobSpec.in_folder("j", 3, tmp_path, "train.py", resume_from=tmp_path / "ckpt")
    env = job_environment(spec, parent_env={"SECRET": "x"})
    assert env["TWINKLE_RESUME_FROM"] == str(tmp_path / "ckpt")
    assert "SECRET" not in env and env["PATH"] and env["LANG"] == "C.UTF-8"
    assert "CUDA_VISIBLE_DEVICES" not in env and "TWINKLE_ASSETS_DIR" not in env


def test_logs_streamed_in_order_with_streams_and_batches(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import sys
        for i in range(500):
            print(f"out {i}")
            if i % 100 == 0:
                print(f"err {i}", file=sys.stderr)
        """,
    )
    sink = ListSink()
    result = JobRunner(spec, sink, batch_lines=50).run()
    assert result.state == "succeeded" and result.exit_code == 0
    assert sink.text() == [f"out {i}" for i in range(500)]
    assert sink.text("stderr") == [f"err {i}" for i in range(0, 500, 100)]
    assert sink.log_posts >= 10  # 500 lines in batches of at most 50
    assert any("python train.py" in t for t in sink.text("system"))


def test_long_line_is_cut(tmp_path):
    spec = make_spec(tmp_path, "print('x' * 100000)\n")
    sink = ListSink()
    JobRunner(spec, sink, max_line_chars=1000).run()
    (line,) = sink.text()
    assert line.startswith("x" * 1000) and "chars cut" in line and len(line) < 1100


def test_progress_bar_redraws_keep_only_what_the_terminal_shows(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import sys
        sys.stderr.write("Loading:  0%\\rLoading: 50%\\rLoading: 100%\\r\\n")
        sys.stderr.flush()
        """,
    )
    sink = ListSink()
    JobRunner(spec, sink).run()
    assert sink.text("stderr") == ["Loading: 100%"]


def test_logs_arrive_while_the_job_runs(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import time
        print("hello", flush=True)
        time.sleep(30)
        """,
    )
    sink = ListSink()
    runner = JobRunner(spec, sink, flush_interval_s=0.2, kill_grace_s=1)
    thread = threading.Thread(target=runner.run)
    thread.start()
    assert sink.got_line.wait(10), "a line printed by a running job must reach the sink within seconds"
    assert "hello" in sink.text()
    runner.cancel()
    thread.join(10)
    assert not thread.is_alive()


def test_failure_reports_exit_code_and_stderr_tail(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import sys
        print("working")
        raise SystemExit("boom: out of patience")
        """,
    )
    sink = ListSink()
    result = JobRunner(spec, sink).run()
    assert result.state == "failed" and result.exit_code == 1
    assert "exit code 1" in result.error and "boom: out of patience" in result.error
    # the API writes the one "attempt 2 failed: exit code 1" line when it records the finish; the runner adds none
    assert not any("failed" in t for t in sink.text("system"))


def test_missing_entrypoint_fails_clearly(tmp_path):
    spec = JobSpec.in_folder("j", 1, tmp_path, "nope.py")
    spec.code_dir.mkdir(parents=True)
    result = JobRunner(spec, ListSink()).run()
    assert result.state == "failed" and "nope.py" in result.error


CHILD_WITH_GRANDCHILD = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(os.path.join(os.environ["TWINKLE_OUTPUT_DIR"], "..", "pids"), "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
print("ready", flush=True)
{handler}
time.sleep(60)
"""


def _run_until_ready(tmp_path, script, **kwargs):
    spec = make_spec(tmp_path, script)
    sink = ListSink()
    runner = JobRunner(spec, sink, flush_interval_s=0.1, **kwargs)
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", runner.run()))
    thread.start()
    assert sink.got_line.wait(15)
    pids = [int(p) for p in (spec.home_dir / "pids").read_text().split()]
    return runner, thread, out, pids, sink


def test_cancel_kills_the_whole_process_group(tmp_path):
    script = CHILD_WITH_GRANDCHILD.replace("{handler}", "")
    runner, thread, out, pids, _ = _run_until_ready(tmp_path, script, kill_grace_s=5)
    t0 = time.monotonic()
    runner.cancel()
    thread.join(10)
    assert time.monotonic() - t0 < 5, "SIGTERM alone must stop a job that does not trap it"
    assert out["result"].state == "cancelled"
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), "child and grandchild must both be gone"


def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    script = CHILD_WITH_GRANDCHILD.replace("{handler}", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    runner, thread, out, pids, _ = _run_until_ready(tmp_path, script, kill_grace_s=1)
    t0 = time.monotonic()
    runner.cancel()
    thread.join(15)
    elapsed = time.monotonic() - t0
    assert out["result"].state == "cancelled" and out["result"].exit_code == -signal.SIGKILL
    assert 0.9 <= elapsed < 8
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)


def test_stale_attempt_kills_the_job_and_reports_nothing_more(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import time
        print("first", flush=True)
        time.sleep(60)
        """,
    )
    sink = ListSink(stale_on_logs=True)
    t0 = time.monotonic()
    result = JobRunner(spec, sink, flush_interval_s=0.1, kill_grace_s=30).run()
    assert result.state == "stale"
    assert time.monotonic() - t0 < 10, "a stale attempt is killed at once, not after the grace period"
    assert not any("stale" in t or "succeeded" in t for t in sink.text("system"))


def test_metrics_file_is_tailed(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import json, os, time
        path = os.environ["TWINKLE_METRICS_FILE"]
        with open(path, "a") as f:
            for step in range(1, 4):
                f.write(json.dumps({"step": step, "ts": time.time(), "metrics": {"loss": 1.0 / step}}) + "\\n")
                f.flush()
                time.sleep(0.3)
            f.write("not json\\n")
            f.write('{"step": 9, "metrics"')  # a half-written last line is never sent
        """,
    )
    sink = ListSink()
    result = JobRunner(spec, sink, flush_interval_s=0.1).run()
    assert result.state == "succeeded"
    assert [r["step"] for r in sink.records] == [1, 2, 3]
    assert sink.records[2]["metrics"]["loss"] == pytest.approx(1 / 3)
    assert any("ignored a metrics line" in t for t in sink.text("system"))


def test_checkpoint_folders_uploaded_when_they_appear_and_at_the_end(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import os, time
        out = os.environ["TWINKLE_OUTPUT_DIR"]
        def save(name, payload):
            tmp = os.path.join(out, f".{name}.tmp")
            os.makedirs(tmp)
            with open(os.path.join(tmp, "adapter_model.safetensors"), "w") as f:
                f.write(payload)
            os.makedirs(os.path.join(tmp, "sub"))
            with open(os.path.join(tmp, "sub", "extra.json"), "w") as f:
                f.write("{}")
            os.rename(tmp, os.path.join(out, name))
        save("checkpoint-1", "weights-1")
        print("saved", flush=True)
        time.sleep(2.5)
        save("checkpoint-2", "weights-2")
        with open(os.path.join(out, "summary.txt"), "w") as f:
            f.write("done")
        with open(os.path.join(out, "checkpoint-1", "adapter_model.safetensors"), "w") as f:
            f.write("weights-1b")
        """,
    )
    sink = ListSink()
    result = JobRunner(spec, sink, checkpoint_poll_s=0.2).run()
    t_end = time.monotonic()
    assert result.state == "succeeded"
    assert sink.artifacts["output/checkpoint-1/adapter_model.safetensors"] == b"weights-1b"
    assert sink.artifacts["output/checkpoint-1/sub/extra.json"] == b"{}"
    assert sink.artifacts["output/checkpoint-2/adapter_model.safetensors"] == b"weights-2"
    assert sink.artifacts["output/summary.txt"] == b"done"
    assert not any(".tmp" in p for p in sink.artifacts)
    # the first checkpoint went up while the job was still running, not only at the end
    assert sink.artifact_times["output/checkpoint-1/adapter_model.safetensors"] < t_end - 1.5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_job_dies_with_a_killed_worker(tmp_path):
    """A daemon killed with SIGKILL takes its job with it (no orphan training on a donor's GPU)."""
    spec = make_spec(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
            from worker.runner import JobRunner, JobSpec
            from pathlib import Path
            class Sink:
                def send_logs(self, lines):
                    pass
                def send_metrics(self, records):
                    pass
                def send_artifact(self, path, file):
                    pass
            spec = JobSpec.in_folder("j", 1, Path({str(spec.home_dir)!r}), "train.py")
            runner = JobRunner(spec, Sink())
            import threading
            threading.Thread(target=runner.run, daemon=True).start()
            runner.started.wait()
            print(runner.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    import subprocess

    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert pid_alive(child)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)


def test_each_checkpoint_folder_is_marked_complete_after_its_files_and_a_job_cannot_forge_the_marker(tmp_path):
    from contract.attempts import CHECKPOINT_MARKER

    spec = make_spec(
        tmp_path,
        f"""
        import json, os
        out = os.environ["TWINKLE_OUTPUT_DIR"]
        os.makedirs(os.path.join(out, "step-1", "shards"))
        for name, text in (("shards/rank-0.bin", "aa"), ("shards/rank-1.bin", "bbb")):
            with open(os.path.join(out, "step-1", name), "w") as f:
                f.write(text)
        # a forged marker claiming a file that is not there: never uploaded (a dot-file), never trusted
        with open(os.path.join(out, "step-1", {CHECKPOINT_MARKER!r}), "w") as f:
            json.dump({{"files": {{"shards/rank-0.bin": 2, "ghost.bin": 1}}}}, f)
        """,
    )
    order: list[str] = []
    sink = ListSink()
    real = sink.send_artifact
    sink.send_artifact = lambda path, file: (order.append(path), real(path, file))  # type: ignore[method-assign]
    assert JobRunner(spec, sink, checkpoint_poll_s=0.2).run().state == "succeeded"
    marker = f"output/step-1/{CHECKPOINT_MARKER}"
    assert json.loads(sink.artifacts[marker]) == {"files": {"shards/rank-0.bin": 2, "shards/rank-1.bin": 3}}
    assert order.index(marker) > max(order.index(f"output/step-1/shards/rank-{r}.bin") for r in (0, 1))
    assert order.count(marker) == 1  # once per content, not once per scan
    # the marker is written where the job cannot reach: beside the attempt folder, not in it
    assert not list(spec.home_dir.rglob("*step-1.json"))
