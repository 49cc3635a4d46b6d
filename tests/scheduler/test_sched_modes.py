"""Run modes through the API: the launcher a job is stored with, and devices shared by count on one worker."""

from __future__ import annotations

import json

from contract import routes
from scheduler.services import dispatch
from scheduler.testing import InProcessWorker, auth, create_user, create_worker_token, submit_script

LOCAL_DP2 = """
import twinkle
from twinkle import DeviceGroup, DeviceMesh
twinkle.initialize(mode='local', groups=[DeviceGroup(name='default', ranks=2, device_type='cpu')],
                   global_device_mesh=DeviceMesh.from_sizes(dp_size=2, device_type='cpu'))
"""
RAY_2 = "import twinkle\nfrom twinkle import DeviceGroup\n" \
    "twinkle.initialize(mode='ray', groups=[DeviceGroup(name='model', ranks=2, device_type='cpu')])\n"
ONE_RANK = "from twinkle import DeviceGroup\nDeviceGroup(name='default', ranks=1, device_type='cpu')\n"
MODE_FROM_ENV = "import os, twinkle\nfrom twinkle import DeviceGroup\nDeviceGroup(ranks=2, device_type='cpu')\n" \
    "twinkle.initialize(mode=os.environ['M'])\n"


def pooled_cpu(ranks: int) -> dict:
    return {"name": "cpu", "ranks": ranks, "device_type": "cpu", "device_model": None, "memory_gb": None,
            "pooled": True}


def test_the_launcher_follows_the_scripts_mode_and_ranks(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    launchers = {name: submit_script(c, user, src).json()["request"]["launcher"]
                 for name, src in (("dp2", LOCAL_DP2), ("ray", RAY_2), ("one", ONE_RANK))}
    assert launchers == {"dp2": "torchrun", "ray": "ray", "one": "python"}


def test_an_undecidable_mode_warns_and_the_owner_decides(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    job = submit_script(c, user, MODE_FROM_ENV).json()
    assert job["request"]["launcher"] == "python"
    assert any("--launcher" in w for w in job["warnings"])
    chosen = submit_script(c, user, MODE_FROM_ENV, launcher="torchrun").json()
    assert chosen["request"]["launcher"] == "torchrun"
    assert not any("--launcher" in w for w in chosen["warnings"])
    inspect = c.post(f"/api/v1{routes.SCRIPTS_INSPECT}", files={"file": ("train.py", MODE_FROM_ENV.encode())},
                     headers=auth(user)).json()
    assert any("--launcher" in w for w in inspect["warnings"])


def test_a_request_with_more_ranks_than_the_script_launches_torchrun(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    req = {"device_groups": [{"name": "default", "ranks": 4, "device_type": "cpu"}]}
    assert submit_script(c, user, ONE_RANK, request=req).json()["request"]["launcher"] == "torchrun"
    req["launcher"] = "python"
    assert submit_script(c, user, ONE_RANK, request=req).json()["request"]["launcher"] == "python"


def test_an_unknown_launcher_is_a_422_naming_the_choices(scheduler_env):
    c = scheduler_env.client
    user = create_user(c, "alice")
    r = submit_script(c, user, ONE_RANK, launcher="mpirun")
    assert r.status_code == 422
    assert "python, torchrun, ray" in r.text and "launcher" in r.json()["error"]["fields"]
    r = submit_script(c, user, ONE_RANK, request={"device_groups": [{"ranks": 1}], "launcher": "mpirun"})
    assert r.status_code == 422


def test_two_2_rank_jobs_share_a_4_rank_pool_on_disjoint_devices(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    alice, bob = create_user(c, "alice"), create_user(c, "bob")
    w = InProcessWorker(c, create_worker_token(c), "box", [pooled_cpu(4)])
    w.register()
    jobs = [submit_script(c, u, LOCAL_DP2).json()["id"] for u in (alice, bob, alice)]
    dispatch.dispatch_round(env.rt.db, env.rt.redis)
    starts = {jid: w.start(jid, 1) for jid in jobs[:2]}
    assert all(r.status_code == 200 for r in starts.values())
    given = {jid: r.json()["devices"] for jid, r in starts.items()}
    assert all(r.json()["launcher"] == "torchrun" for r in starts.values())
    held = sorted(d for devs in given.values() for g in devs for d in g["devices"])
    assert held == [0, 1, 2, 3]  # disjoint, every device once
    third = c.get(f"/api/v1/jobs/{jobs[2]}", headers=auth(alice)).json()
    assert third["state"] == "queued" and "all busy" in third["pending_reason"]

    listed = c.get(f"/api/v1{routes.WORKERS}", headers=auth(alice)).json()["items"][0]
    assert listed["running_jobs"] == 2 and listed["device_groups"][0]["pooled"] is True
    # alice sees which devices bob's job holds, not its id
    assert {(u["job_id"], tuple(u["devices"])) for u in listed["devices_in_use"]} == {
        (jid if jid != jobs[1] else None, tuple(devs[0]["devices"])) for jid, devs in given.items()
    }

    # a job's end frees exactly its devices: the third job takes them
    first = jobs[0]
    assert w.finish(first, 1).status_code == 200
    dispatch.dispatch_round(env.rt.db, env.rt.redis)
    r = w.start(jobs[2], 1)
    assert r.status_code == 200, r.text
    assert r.json()["devices"][0]["devices"] == given[first][0]["devices"]


def test_a_static_slot_still_runs_one_job_at_a_time(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    alice = create_user(c, "alice")
    static = {**pooled_cpu(4), "pooled": False}
    w = InProcessWorker(c, create_worker_token(c), "box", [static])
    w.register()
    jobs = [submit_script(c, alice, LOCAL_DP2).json()["id"] for _ in range(2)]
    dispatch.dispatch_round(env.rt.db, env.rt.redis)
    r = w.start(jobs[0], 1)
    assert r.status_code == 200 and r.json()["devices"][0]["devices"] == [0, 1, 2, 3]
    assert c.get(f"/api/v1/jobs/{jobs[1]}", headers=auth(alice)).json()["state"] == "queued"
    assert json.loads(json.dumps(r.json()))["launcher"] == "torchrun"


def test_twinkle_submit_warns_when_the_reader_cannot_tell_and_launcher_decides(scheduler_env, tmp_path, monkeypatch,
                                                                              capsys):
    """The CLI against the real API (in process): the reader's doubt is printed, ``--launcher`` settles it."""
    import pytest

    import submit.cli as cli
    from submit.client import Client

    c = scheduler_env.client
    user = create_user(c, "alice")
    from fastapi.testclient import TestClient

    def client(server, token) -> Client:
        real = Client("http://testserver", user)
        real._http.close()
        real._http = TestClient(scheduler_env.app, base_url="http://testserver/api/v1", headers=auth(user))
        return real

    monkeypatch.setattr(cli, "_client", client)
    monkeypatch.setenv("COLUMNS", "200")
    script = tmp_path / "train.py"
    script.write_text(MODE_FROM_ENV)

    def run(*args: str) -> tuple[str, str]:
        with pytest.raises(SystemExit) as info:
            cli.main([str(script), *args])
        assert info.value.code == 0
        captured = capsys.readouterr()
        return captured.out, captured.err

    out, err = run()
    assert "launched with python" in out and "--launcher" in err
    out, err = run("--launcher", "torchrun")
    assert "launched with torchrun" in out and "--launcher" not in err
    with pytest.raises(SystemExit) as info:
        cli.main([str(script), "--launcher", "mpirun"])
    assert info.value.code == 2 and "mpirun" in capsys.readouterr().err
