"""The runner's side of issue 18, with real child processes: the job's own variables and arguments, paths shown
relative to the job folder, the CPU/RSS samples of its process tree, and the TensorBoard event file."""

from __future__ import annotations

import json
import sys

import pytest

from tests.worker.test_runner import ListSink, make_spec
from worker.runner import JobRunner


def test_the_job_gets_its_variables_and_arguments_and_the_platform_variables_win(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import json, os, sys
        with open(os.path.join(os.environ["HOME"], "seen.json"), "w") as f:
            json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, f)
        """,
        args=["--epochs", "3", "a b"],
        # a hostile or broken API could let reserved names through: the worker drops them itself
        user_env={"LR": "1e-3", "TWINKLE_OUTPUT_DIR": "/etc", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
        cuda_visible_devices="1",
    )
    result = JobRunner(spec, ListSink()).run()
    assert result.state == "succeeded", result
    seen = json.loads((spec.home_dir / "seen.json").read_text())
    assert seen["argv"] == ["--epochs", "3", "a b"]
    env = seen["env"]
    assert env["LR"] == "1e-3"
    assert env["TWINKLE_OUTPUT_DIR"] == str(spec.output_dir) and env["HOME"] == str(spec.home_dir)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"


def test_log_lines_show_paths_relative_to_the_job_folder_with_stream_and_time(tmp_path):
    spec = make_spec(
        tmp_path,
        """
        import os, sys
        print("saved", os.path.join(os.environ["TWINKLE_OUTPUT_DIR"], "last-checkpoint"))
        print("cwd", os.getcwd(), "home", os.environ["HOME"], file=sys.stderr)
        """,
    )
    sink = ListSink()
    assert JobRunner(spec, sink).run().state == "succeeded"
    assert "saved output/last-checkpoint" in sink.text("stdout")
    assert "cwd code home ." in sink.text("stderr")
    assert str(tmp_path) not in json.dumps(sink.lines)
    assert all(isinstance(line["ts"], float) and line["stream"] in ("stdout", "stderr", "system") for line in sink.lines)


def test_the_worker_samples_cpu_and_memory_of_the_job_process_tree(tmp_path):
    # a parent and a busy child: the child's CPU counts too (the tree, not only the leader)
    spec = make_spec(
        tmp_path,
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([{sys.executable!r}, "-c", "import time\\nt = time.time()\\nwhile time.time() - t < 3: pass"])
        blob = bytearray(64 << 20)  # 64 MiB resident in the leader
        child.wait()
        print("done", len(blob))
        """,
    )
    sink = ListSink()
    assert JobRunner(spec, sink, sys_sample_s=0.5).run().state == "succeeded"
    samples = [r["metrics"] for r in sink.records if "sys/cpu_percent" in r["metrics"]]
    assert samples, sink.records
    # one busy core is ~100; this machine may be loaded (2 cores shared), so only "clearly busy" is asserted
    assert max(s["sys/cpu_percent"] for s in samples) > 5
    assert max(s["sys/rss_bytes"] for s in samples) > 64 << 20
    assert max(s["sys/processes"] for s in samples) >= 2
    assert not any(k.startswith("sys/gpu") for s in samples for k in s)  # no GPU given: no GPU samples


def test_metrics_are_written_as_a_tensorboard_event_file_that_reads_back_the_same(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    spec = make_spec(
        tmp_path,
        """
        import json, os, time
        with open(os.environ["TWINKLE_METRICS_FILE"], "a") as f:
            for step, loss in [(1, 2.5), (2, 1.75), (3, 1.0)]:
                f.write(json.dumps({"step": step, "ts": time.time(), "metrics": {"loss": loss, "lr": 1e-3,
                                    "note": "text is skipped"}}) + "\\n")
        """,
    )
    sink = ListSink()
    assert JobRunner(spec, sink, sys_sample_s=60).run().state == "succeeded"
    [path] = [p for p in sink.artifacts if p.startswith("tensorboard/")]
    assert path.startswith("tensorboard/events.out.tfevents.") and path.endswith(".job-1-2")
    logdir = tmp_path / "downloaded" / "tensorboard"
    logdir.mkdir(parents=True)
    (logdir / path.split("/")[-1]).write_bytes(sink.artifacts[path])
    acc = event_accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "lr"}
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.5), (2, 1.75), (3, 1.0)]


def test_the_event_file_lives_outside_the_job_folder_so_a_link_there_cannot_redirect_it(tmp_path):
    # The job owns its folder: were the event file written there, a link planted by the job would make the
    # worker (outside the sandbox) write wherever the link points.
    victim = tmp_path / "victim"
    victim.mkdir()
    spec = make_spec(
        tmp_path,
        f"""
        import json, os
        home = os.environ["HOME"]
        for name in ("tensorboard", "output/tensorboard", "runs"):
            os.makedirs(os.path.dirname(os.path.join(home, name)), exist_ok=True)
            os.symlink({str(victim)!r}, os.path.join(home, name))
        with open(os.environ["TWINKLE_METRICS_FILE"], "a") as f:
            f.write(json.dumps({{"step": 1, "ts": 1.0, "metrics": {{"loss": 1.0}}}}) + "\\n")
        """,
    )
    sink = ListSink()
    assert JobRunner(spec, sink, sys_sample_s=60).run().state == "succeeded"
    assert any(p.startswith("tensorboard/") for p in sink.artifacts)
    assert list(victim.iterdir()) == []
    assert spec.private_dir is not None and not spec.private_dir.is_relative_to(spec.home_dir)
