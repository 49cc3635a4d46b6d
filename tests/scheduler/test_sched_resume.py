"""Resume takes the checkpoint the platform recorded last for an earlier attempt, never a folder a donor named to
look newest (SQLite and PostgreSQL), and the worker fetches exactly that folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.attempts import CHECKPOINT_MARKER
from scheduler.services import dispatch
from scheduler.testing import InProcessWorker, create_user, create_worker_token, submit_script
from scheduler.testing.factories import CPU_JOB, cpu_group
from worker.tasks import AttemptExecutor, BundleError


@pytest.fixture()
def setup(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    w = InProcessWorker(c, create_worker_token(c), "box", [cpu_group()])
    w.register()
    return scheduler_env, c, user, w


def run_round(env):
    return dispatch.dispatch_round(env.rt.db, env.rt.redis)


def test_the_newest_recorded_checkpoint_wins_not_the_biggest_number(setup):
    env, c, user, w = setup
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    w.start(jid, 1)
    # the donor of attempt 1 uploads a folder named to look newest first, then the real saves, in order
    w.checkpoint(jid, 1, "checkpoint-999999", {"optimizer.pt": b"o"})
    w.checkpoint(jid, 1, "checkpoint-step-10", {"state.txt": b"10"})
    w.checkpoint(jid, 1, "checkpoint-step-20", {"state.txt": b"20", "optimizer.pt": b"o20"})
    assert w.artifact(jid, 1, "output/notes.txt", b"notes").status_code == 201
    w.register()  # the worker restarts: attempt 1 is lost, the job requeued
    run_round(env)
    started = w.start(jid, 2).json()
    resume = started["resume_from"]
    assert resume["attempt"] == 1 and resume["checkpoint"] == "output/checkpoint-step-20"
    assert [f["path"] for f in resume["files"]] == [
        "output/checkpoint-step-20/optimizer.pt", "output/checkpoint-step-20/state.txt"
    ]

    # a later attempt that recorded a checkpoint of its own is the newer resume point
    w.checkpoint(jid, 2, "checkpoint-step-30", {"state.txt": b"30"})
    w.register()
    run_round(env)
    resume3 = w.start(jid, 3).json()["resume_from"]
    assert (resume3["attempt"], resume3["checkpoint"]) == (2, "output/checkpoint-step-30")


def test_a_checkpoint_cut_short_is_never_a_resume_point(setup):
    """Attempt 2 died while uploading sharded checkpoints: after a complete one, a folder without its marker, one
    whose marker names a shard never recorded, one whose shard arrived at another size. Its complete checkpoint is
    the resume point, though the broken ones were recorded later."""
    env, c, user, w = setup
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    w.start(jid, 1)
    w.register()
    run_round(env)
    w.start(jid, 2)
    shards = {"shard-0.safetensors": b"a" * 20, "shard-1.safetensors": b"b" * 20}
    w.checkpoint(jid, 2, "step-20", shards)

    def marker(folder: str, files: dict[str, int]) -> None:
        body = json.dumps({"files": files}).encode()
        assert w.artifact(jid, 2, f"output/{folder}/{CHECKPOINT_MARKER}", body).status_code == 201

    assert w.artifact(jid, 2, "output/step-30/shard-0.safetensors", b"a" * 30).status_code == 201  # no marker
    assert w.artifact(jid, 2, "output/step-40/shard-0.safetensors", b"a" * 40).status_code == 201
    marker("step-40", {"shard-0.safetensors": 40, "shard-1.safetensors": 40})  # shard 1 never arrived
    for name in shards:
        assert w.artifact(jid, 2, f"output/step-50/{name}", b"c" * 49).status_code == 201
    marker("step-50", {"shard-0.safetensors": 50, "shard-1.safetensors": 50})  # cut short at 49 bytes
    w.register()
    run_round(env)
    resume = w.start(jid, 3).json()["resume_from"]
    assert (resume["attempt"], resume["checkpoint"]) == (2, "output/step-20")
    assert [f["path"] for f in resume["files"]] == [f"output/step-20/{name}" for name in sorted(shards)]


def test_a_job_whose_earlier_attempts_saved_no_folder_starts_fresh(setup):
    env, c, user, w = setup
    jid = submit_script(c, user, CPU_JOB).json()["id"]
    run_round(env)
    w.start(jid, 1)
    assert w.artifact(jid, 1, "output/loose-file.bin", b"x").status_code == 201
    w.register()
    run_round(env)
    assert w.start(jid, 2).json()["resume_from"] is None


class _Downloads:
    def __init__(self) -> None:
        self.fetched: list[str] = []

    def download_url(self, url: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(url)
        self.fetched.append(url)


def _executor(client) -> AttemptExecutor:
    ex = AttemptExecutor.__new__(AttemptExecutor)  # only _fetch_resume is exercised: it needs just the client
    ex.client = client
    return ex


def test_the_worker_fetches_only_the_checkpoint_the_platform_named(tmp_path):
    client = _Downloads()
    resume = {"attempt": 1, "checkpoint": "output/checkpoint-step-20", "files": [
        {"path": "output/checkpoint-999999/optimizer.pt", "size": 1, "url": "u-evil"},
        {"path": "output/checkpoint-step-20/optimizer.pt", "size": 1, "url": "u-good"},
    ]}
    got = _executor(client)._fetch_resume(resume, tmp_path / "resume")
    assert got == (tmp_path / "resume" / "output" / "checkpoint-step-20").resolve()
    assert client.fetched == ["u-good"]
    assert not (tmp_path / "resume" / "output" / "checkpoint-999999").exists()


@pytest.mark.parametrize("bad", ["output/../../etc", "elsewhere/ckpt", "output/a/b"])
def test_a_checkpoint_name_outside_output_is_refused(tmp_path, bad):
    resume = {"attempt": 1, "checkpoint": bad, "files": [{"path": f"{bad}/x", "size": 1, "url": "u"}]}
    with pytest.raises(BundleError):
        _executor(_Downloads())._fetch_resume(resume, tmp_path / "resume")
