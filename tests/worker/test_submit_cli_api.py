"""twinkle-submit against the real API (served by uvicorn on a loopback port, real Redis, local storage): env and
args, rerun, list, status in the local zone, the job page and next commands, metrics, download and --zip, open."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import zipfile

import pytest

from scheduler.services import dispatch
from scheduler.testing import InProcessWorker, create_worker_token
from scheduler.testing.factories import cpu_group, create_user
from scheduler.testing.net import serving
from submit.cli import main

JOB = "from twinkle import DeviceGroup\nDeviceGroup(name='default', ranks=1, device_type='cpu')\nprint('hi')\n"


@pytest.fixture()
def api(scheduler_env, monkeypatch, tmp_path):
    """The API on http://127.0.0.1:<port>; the CLI's connection set through its environment variables."""
    with serving(scheduler_env.app, lifespan="off") as url:
        token = create_user(scheduler_env.client, "alice")
        monkeypatch.setenv("TWINKLE_API_URL", url)
        monkeypatch.setenv("TWINKLE_TOKEN", token)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        monkeypatch.setenv("COLUMNS", "250")
        client = scheduler_env.client
        worker = InProcessWorker(client, create_worker_token(client), "donor-7", [cpu_group()])
        worker.register()
        yield scheduler_env, url, worker


def cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def submit(tmp_path, capsys, *extra: str) -> str:
    (tmp_path / "train.py").write_text(JOB)
    code, out, err = cli([str(tmp_path / "train.py"), *extra], capsys)
    assert code == 0, err
    return out.split("submitted job ")[1].split()[0]


def run_job(env, worker, job_id):
    dispatch.dispatch_round(env.rt.db, env.rt.redis)
    assert worker.start(job_id, 1).status_code == 200


def test_submit_with_env_and_args_prints_the_page_and_the_next_commands(api, tmp_path, capsys):
    _, url, _ = api
    (tmp_path / "train.py").write_text(JOB)
    code, out, err = cli([str(tmp_path / "train.py"), "--env", "LR=1e-4", "-e", "TAG=a=b", "--arg", "--epochs",
                          "--arg", "3"], capsys)
    assert code == 0, err
    job_id = out.split("submitted job ")[1].split()[0]
    assert f"page:   {url}/jobs/{job_id}" in out
    assert f"twinkle-submit logs -f {job_id}" in out and f"twinkle-submit status {job_id}" in out
    assert "place 1 in the queue" in out
    code, out, _ = cli(["status", job_id, "--json"], capsys)
    job = json.loads(out)
    assert job["env"] == {"LR": "1e-4", "TAG": "a=b"} and job["args"] == ["--epochs", "3"]
    code, _, err = cli([str(tmp_path / "train.py"), "--env", "NOEQUALS"], capsys)
    assert code == 2 and "NAME=VALUE" in err
    code, _, err = cli([str(tmp_path / "train.py"), "--env", "TWINKLE_JOB_ID=x"], capsys)
    assert code == 2 and "set by the platform" in err


def test_rerun_merges_env_replaces_args_and_names_the_original(api, tmp_path, capsys):
    first = submit(tmp_path, capsys, "--env", "LR=1e-4", "--env", "SEED=1", "--arg", "-v", "--name", "base")
    code, out, err = cli(["rerun", first, "--env", "LR=5e-4", "--arg", "--epochs", "--arg", "9"], capsys)
    assert code == 0, err
    assert f"(a rerun of {first})" in out
    second = out.split("submitted job ")[1].split()[0]
    job = json.loads(cli(["status", second, "--json"], capsys)[1])
    assert job["env"] == {"LR": "5e-4", "SEED": "1"} and job["args"] == ["--epochs", "9"]
    assert job["name"] == "base" and job["resubmitted_from"] == first
    _, out, _ = cli(["rerun", first, "--no-args", "--ranks", "1", "--device-type", "cpu"], capsys)
    third = json.loads(cli(["status", out.split("submitted job ")[1].split()[0], "--json"], capsys)[1])
    assert third["args"] == [] and third["env"] == {"LR": "1e-4", "SEED": "1"}


def test_list_and_status_show_worker_duration_reason_and_local_zone_times(api, tmp_path, capsys, monkeypatch):
    env, _, worker = api
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        job_id = submit(tmp_path, capsys)
        run_job(env, worker, job_id)
        worker.logs(job_id, 1, "Traceback (most recent call last):", "KeyError: 'labels'", stream="stderr")
        worker.finish(job_id, 1, "failed", 1, "exit code 1")
        _, out, _ = cli(["list"], capsys)
        row = next(line for line in out.splitlines() if job_id in line)
        assert "failed" in row and "donor-7" in row and "exit code 1: KeyError: 'labels'" in row and "JST" in row
        page = json.loads(cli(["list", "--json"], capsys)[1])
        assert page["total"] == 1 and page["items"][0]["worker_name"] == "donor-7"
        _, out, err = cli(["status", job_id], capsys)
        assert "failed (attempt 1): exit code 1" in err and "| KeyError: 'labels'" in err
        assert "JST" in out and "worker:   donor-7" in out and f"/jobs/{job_id}" in out
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_metrics_table_and_csv(api, tmp_path, capsys):
    env, _, worker = api
    job_id = submit(tmp_path, capsys)
    run_job(env, worker, job_id)
    worker.metrics(job_id, 1, [{"step": 1, "ts": 1.0, "metrics": {"loss": 2.0}},
                               {"step": 2, "ts": 2.0, "metrics": {"loss": 1.5}},
                               {"step": 2, "ts": 3.0, "metrics": {"sys/cpu_percent": 90.0}}])
    code, out, _ = cli(["metrics", job_id], capsys)
    assert code == 0 and "loss" in out and "1.5" in out and "sys/cpu_percent" not in out
    code, out, _ = cli(["metrics", job_id, "--csv"], capsys)
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["attempt", "step", "ts", "loss", "sys/cpu_percent"] and len(rows) == 4
    code, out, _ = cli(["metrics", job_id, "--json", "--series", "training"], capsys)
    assert code == 0 and [r["metrics"] for r in json.loads(out)] == [{"loss": 2.0}, {"loss": 1.5}]


def test_download_says_where_the_files_landed_and_zip_saves_one_file(api, tmp_path, capsys):
    env, _, worker = api
    job_id = submit(tmp_path, capsys)
    run_job(env, worker, job_id)
    for path in ("output/last-checkpoint/adapter_model.safetensors", "output/last-checkpoint/adapter_config.json"):
        assert worker.artifact(job_id, 1, path, b"w" * 100).status_code == 201
    worker.finish(job_id, 1)
    dest = tmp_path / "dl"
    code, out, err = cli(["download", job_id, "--dest", str(dest)], capsys)
    assert code == 0, err
    assert f"{dest.resolve()}/output/last-checkpoint" in out.replace("\n  ", " ")
    assert (dest / "output/last-checkpoint/adapter_model.safetensors").read_bytes() == b"w" * 100
    code, out, err = cli(["download", job_id, "--dest", str(dest), "--zip", "--folder", "output/last-checkpoint"],
                         capsys)
    assert code == 0, err
    saved = dest / f"{job_id}-last-checkpoint.zip"
    assert f"saved {saved.resolve()}" in out
    assert sorted(zipfile.ZipFile(saved).namelist()) == ["last-checkpoint/adapter_config.json",
                                                         "last-checkpoint/adapter_model.safetensors"]


def test_open_prints_the_page_and_says_so_when_no_browser_opens(api, capsys, monkeypatch):
    import webbrowser

    _, url, _ = api
    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda page: opened.append(page) or False)  # a machine without one
    code, out, err = cli(["open", "abc123"], capsys)
    assert code in (0, None) and out.strip() == f"{url}/jobs/abc123" and opened == [f"{url}/jobs/abc123"]
    assert "no browser" in err
    assert os.environ["TWINKLE_API_URL"] == url
