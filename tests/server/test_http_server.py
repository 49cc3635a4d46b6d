"""twinkle-server over real HTTP (uvicorn in a thread, the tiny model): tenancy, limits, checkpoints, futures."""

from __future__ import annotations

import time

import pytest
from server_helpers import Tenant, new_token, rows

pytestmark = pytest.mark.slow


@pytest.fixture()
def tenants(server_url):
    made: list[Tenant] = []

    def make(heartbeat: bool = True) -> Tenant:
        t = Tenant(server_url, new_token()).start(heartbeat)
        made.append(t)
        return t

    yield make
    for t in made:  # free the module server's two slots for the next test
        for name in ("default", "second"):
            t.model_call("remove_adapter", adapter_name=name)
        t.stop()


def train_step(t: Tenant, seed: int) -> float:
    out = t.ok("forward_backward", inputs=rows(seed))["result"]
    assert t.model_call("clip_grad_and_step").status_code == 200
    return out["loss"]


def test_auth_and_request_id_are_required(server_url):
    import requests

    r = requests.post(f"{server_url}/api/v1/twinkle/create_session", json={}, headers={"x-request-id": "x"})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    r = requests.post(f"{server_url}/api/v1/twinkle/create_session", json={}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 400 and "x-request-id" in r.json()["detail"]
    # the unpatched Tinker SDK sends X-API-Key only
    r = requests.post(f"{server_url}/api/v1/twinkle/create_session", json={},
                      headers={"X-API-Key": "k", "x-request-id": "x"})
    assert r.status_code == 200 and r.json()["session_id"].startswith("session_")


def test_a_tenant_reaches_only_its_own_adapters_and_checkpoints(tenants):
    alice, bob = tenants(), tenants()
    assert alice.add().status_code == 200
    assert bob.add().status_code == 200
    losses = [train_step(alice, i) for i in range(3)]
    assert losses[-1] < losses[0]
    saved = alice.ok("save", name="step3")
    uri = saved["twinkle_path"]
    run = uri.split("/")[2]
    assert uri == f"twinkle://{alice.session_id}-default/weights/step3"

    # bob, using alice's session id, or naming her run/checkpoint: all "not found"
    spy = Tenant(bob.url, bob.token)
    spy.session_id = alice.session_id
    assert spy.model_call("forward_backward", adapter_name="default", inputs=rows()).status_code == 404
    assert bob.raw("GET", f"twinkle/training_runs/{run}").status_code == 404
    assert bob.raw("GET", f"twinkle/training_runs/{run}/checkpoints").status_code == 404
    assert bob.model_call("load", adapter_name="default", name=uri).status_code == 404
    assert bob.raw("DELETE", f"twinkle/training_runs/{run}/checkpoints/weights/step3").status_code == 404
    assert [r["training_run_id"] for r in bob.raw("GET", "twinkle/training_runs").json()["training_runs"]] == [
        f"{bob.session_id}-default"]
    # alice sees hers
    listed = alice.raw("GET", f"twinkle/training_runs/{run}/checkpoints").json()["checkpoints"]
    assert [c["twinkle_path"] for c in listed] == [uri]

    # load restores the saved weights: train on, load step3, the next loss equals the one after step3
    after_save = train_step(alice, 3)
    train_step(alice, 4)
    assert alice.ok("load", name=uri) is None
    assert train_step(alice, 3) == pytest.approx(after_save, abs=1e-5)


def test_path_safety(tenants):
    t = tenants()
    assert t.add(name="../evil").status_code == 400
    assert t.add().status_code == 200
    for bad in ("twinkle://../x/weights/y", "/etc/passwd", "twinkle://a/weights/..", "twinkle://a/b/c/d"):
        r = t.model_call("load", adapter_name="default", name=bad)
        assert r.status_code in (400, 404), (bad, r.status_code, r.text)
    assert t.model_call("save", adapter_name="default", name="../../x").status_code == 400
    assert t.raw("DELETE", "twinkle/training_runs/x/checkpoints/weights/..").status_code in (400, 404)
    # output_dir is the server's business: a tenant-given one is ignored, the checkpoint lands in storage
    saved = t.ok("save", name="ok", output_dir="/tmp/not-here")
    assert saved["twinkle_path"].endswith("/weights/ok")


def test_all_slots_used_gives_429_naming_the_limit(tenants):
    a, b = tenants(), tenants()
    assert a.add("default").status_code == 200
    assert a.add("second").status_code == 200
    r = b.add()
    assert r.status_code == 429 and "Max loras: 2" in r.json()["detail"]
    assert b.raw("GET", "twinkle/capacity_info").json() == {"max_loras": 2, "used_loras": 2, "free_loras": 0}
    assert a.model_call("remove_adapter", adapter_name="second").status_code == 200
    assert b.add().status_code == 200  # the freed slot


def test_batch_over_max_length_gives_413(tenants):
    t = tenants()
    assert t.add().status_code == 200
    r = t.model_call("forward_backward", adapter_name="default", inputs=rows(n=4, length=20))  # 80 > 64
    assert r.status_code == 413 and "Max length exceeds 64" in r.json()["detail"]
    assert t.model_call("forward_backward", adapter_name="default", inputs=rows(n=2, length=20)).status_code == 200


def test_bad_input_and_loss_errors_reach_only_that_tenant(tenants):
    good, bad = tenants(), tenants()
    assert good.add().status_code == 200 and bad.add().status_code == 200
    good.ok("set_optimizer", optimizer_cls="AdamW", lr=1e-2)
    losses = [train_step(good, 0)]
    for body in ({"inputs": [{"input_ids": "not ids"}]}, {"inputs": [{"labels": [1, 2]}]},
                 {"inputs": rows(), "advantages": [1.0, 2.0, 3.0, 4.0, 5.0]}):  # 5 advantages for 2 rows
        if "advantages" in body:
            assert bad.model_call("set_loss", adapter_name="default", loss_cls="GRPOLoss").status_code == 200
        r = bad.model_call("forward_backward", adapter_name="default", **body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        losses.append(train_step(good, 0))
    assert bad.model_call("set_loss", adapter_name="default", loss_cls="CrossEntropyLoss").status_code == 200
    r = bad.model_call("set_loss", adapter_name="default", loss_cls="NoSuchLoss")
    assert r.status_code == 400 and "NoSuchLoss" in r.json()["detail"]
    losses.append(train_step(good, 0))
    assert losses[-1] < losses[0]
    assert train_step(bad, 0) > 0  # the bad tenant recovers too


def test_silent_session_loses_its_adapter_after_the_ttl(tenants):
    quiet = tenants(heartbeat=False)
    assert quiet.add().status_code == 200
    saved = quiet.ok("save", name="kept")
    quiet.heartbeat()
    free_before = quiet.raw("GET", "twinkle/capacity_info").json()["free_loras"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if quiet.raw("GET", "twinkle/capacity_info").json()["free_loras"] == free_before + 1:
            break
        time.sleep(0.25)
    else:
        pytest.fail("the silent tenant's adapter was not expired within 30 s (TTL 3 s)")
    r = quiet.model_call("forward_backward", adapter_name="default", inputs=rows())
    assert r.status_code == 404 and "load your last checkpoint" in r.json()["detail"]
    run = saved["twinkle_path"].split("/")[2]
    assert [c["twinkle_path"] for c in quiet.raw("GET", f"twinkle/training_runs/{run}/checkpoints").json()[
        "checkpoints"]] == [saved["twinkle_path"]]


def test_async_call_and_long_poll_retrieve_future(tenants):
    t = tenants()
    assert t.add().status_code == 200
    r = t.raw("POST", "model/tiny/twinkle/forward_backward", {"adapter_name": "default", "inputs": rows()},
              Prefer="respond-async")
    assert r.status_code == 202
    request_id = r.json()["request_id"]
    result = t.raw("POST", "retrieve_future", {"request_id": request_id}).json()
    assert result["loss"] > 0 and len(result["logps"]) == 2  # the stored result: what the sync route wraps
    # a future of another tenant is not found
    other = Tenant(t.url, new_token())
    assert other.raw("POST", "retrieve_future", {"request_id": request_id}).status_code == 404
    # a failed task answers its status and error
    r = t.raw("POST", "model/tiny/twinkle/forward_backward", {"adapter_name": "default", "inputs": rows(n=8, length=20)},
              Prefer="respond-async")
    failed = t.raw("POST", "retrieve_future", {"request_id": r.json()["request_id"]})
    assert failed.status_code == 200 and failed.json()["category"] == "user" and failed.json()["status"] == 413


def test_sampler_with_live_adapter_and_checkpoint(tenants):
    t = tenants()
    assert t.add().status_code == 200
    train_step(t, 0)
    uri = t.ok("save", name="s")["twinkle_path"]
    params = {"max_tokens": 4, "temperature": 0, "seed": 0}
    prompt = [{"input_ids": [5, 6, 7, 8]}]
    live = t.raw("POST", "sampler/tiny/twinkle/sample",
                 {"inputs": prompt, "sampling_params": params, "adapter_name": "default"}).json()
    from_ckpt = t.raw("POST", "sampler/tiny/twinkle/sample",
                      {"inputs": prompt, "sampling_params": params, "adapter_uri": uri}).json()
    tokens = live["samples"][0]["sequences"][0]["tokens"]
    assert len(tokens) == 4 and tokens == from_ckpt["samples"][0]["sequences"][0]["tokens"]
    other = Tenant(t.url, new_token())
    r = other.raw("POST", "sampler/tiny/twinkle/sample", {"inputs": prompt, "adapter_uri": uri})
    assert r.status_code == 404
