"""Fast checks of the server's parts without a model: config schema, path rules, futures, the compute queue."""

from __future__ import annotations

import threading
import time

import pytest

from twinkle.server.checkpoints import CheckpointStore, make_storage, parse_uri
from twinkle.server.compute import ComputeQueue
from twinkle.server.config import ConfigFileError, ServerConfig
from twinkle.server.errors import NotFound, UserError
from twinkle.server.state import FutureStore, Sessions


def test_unknown_keys_are_rejected_at_every_level(tmp_path):
    base = ServerConfig.single_model("some/model", max_loras=3, port=9000).model_dump()
    assert ServerConfig.model_validate(base).applications[1].args["max_loras"] == 3
    for where in ("top", "http", "model_args", "adapter_config"):
        data = ServerConfig.single_model("some/model").model_dump()
        target = {"top": data, "http": data["http_options"], "model_args": data["applications"][1]["args"],
                  "adapter_config": data["applications"][1]["args"]["adapter_config"]}[where]
        target["typo_key"] = 1
        path = tmp_path / f"{where}.yaml"
        import yaml

        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigFileError, match="typo_key"):
            ServerConfig.from_yaml(path)
    path = tmp_path / "broken.yaml"
    path.write_text("applications: [")
    with pytest.raises(ConfigFileError, match="not valid YAML"):
        ServerConfig.from_yaml(path)


@pytest.mark.parametrize("uri", ["twinkle://../x/weights/y", "twinkle://a/weights/..", "twinkle://a/weights/~x",
                                 "twinkle://a/other/y", "twinkle://a/weights/b/c", "/etc/passwd", "",
                                 "twinkle://a/weights/x\x00y"])
def test_bad_checkpoint_uris_are_refused(uri):
    with pytest.raises(UserError) as err:
        parse_uri(uri)
    assert err.value.status == 400


def test_checkpoints_stay_inside_the_tenant(tmp_path):
    store = CheckpointStore(make_storage(str(tmp_path / "s")), tmp_path / "cache")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    (folder / "adapter_config.json").write_text("{}")
    store.write_run("alice", "run1", {"base_model": "m"})
    meta = store.save("alice", "run1", "weights", "s1", folder, {})
    assert meta["twinkle_path"] == "twinkle://run1/weights/s1"
    assert (store.fetch("alice", meta["twinkle_path"]) / "adapter_model.safetensors").read_bytes() == b"w"
    with pytest.raises(NotFound):
        store.fetch("bob", meta["twinkle_path"])
    with pytest.raises(NotFound):
        store.list("bob", "run1")
    assert [c["twinkle_path"] for c in store.list("alice", "run1")] == [meta["twinkle_path"]]
    store.delete("alice", "run1", "weights/s1")
    assert store.list("alice", "run1") == []


def test_sessions_expire_and_belong_to_their_tenant():
    sessions = Sessions()
    s = sessions.create("alice")
    assert sessions.get(s.session_id, "bob") is None and not sessions.touch(s.session_id, "bob")
    assert sessions.touch(s.session_id, "alice")
    time.sleep(0.05)
    assert sessions.expire(0.01) == [s.session_id]
    assert sessions.get(s.session_id, "alice") is None


def test_futures_long_poll_and_terminal_states():
    store = FutureStore()
    rid = store.create("alice")
    t0 = time.monotonic()
    assert store.wait(rid, "alice", 0.2)["status"] == "pending"  # times out, still pending
    assert time.monotonic() - t0 >= 0.19
    threading.Timer(0.1, lambda: store.update(rid, status="completed", result=1)).start()
    assert store.wait(rid, "alice", 5)["result"] == 1
    store.update(rid, status="running")  # terminal states never regress
    assert store.get(rid, "alice")["status"] == "completed"
    assert store.wait(rid, "bob", 0.1) is None


def test_compute_queue_round_robins_over_keys():
    futures = FutureStore()
    queue = ComputeQueue("t", futures)
    order: list[str] = []
    gate = threading.Event()
    queue.submit("block", "x", gate.wait)
    subs = [queue.submit("a", "x", lambda i=i: order.append(f"a{i}")) for i in range(3)]
    subs += [queue.submit("b", "x", lambda: order.append("b0"))]
    gate.set()
    for _, fut in subs:
        fut.result(timeout=5)
    assert order == ["a0", "b0", "a1", "a2"]  # b is not stuck behind all of a's calls
    _, failing = queue.submit("a", "x", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    _, after = queue.submit("a", "x", lambda: "still serving")
    assert after.result(timeout=5) == "still serving"
    queue.stop()


def test_per_token_model_limit_counts_across_sessions():
    from twinkle.server.state import AdapterRecord, Registry

    registry = Registry()
    registry.reserve(AdapterRecord("s1-a", "a", "alice", "s1", "m", 8), per_token_limit=2)
    registry.reserve(AdapterRecord("s2-a", "a", "alice", "s2", "m", 8), per_token_limit=2)
    registry.reserve(AdapterRecord("s3-a", "a", "bob", "s3", "m", 8), per_token_limit=2)  # bob has his own count
    with pytest.raises(UserError) as err:
        registry.reserve(AdapterRecord("s4-a", "a", "alice", "s4", "m", 8), per_token_limit=2)
    assert err.value.status == 429 and "Model limit exceeded: 2/2" in err.value.detail
    registry.release("s1-a")
    registry.reserve(AdapterRecord("s4-a", "a", "alice", "s4", "m", 8), per_token_limit=2)
    assert registry.get("s4-a", "bob") is None and registry.get("s4-a", "alice").short == "a"


def test_admission_limits_size_and_rate_per_tenant_and_zero_disables():
    from twinkle.server.config import QueueConfig
    from twinkle.server.limits import Admission, count_input_tokens

    assert count_input_tokens([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}, {"messages": []}]) == 4
    gate = Admission(QueueConfig(rps_limit=2, tps_limit=10, window_seconds=0.3, max_input_tokens=8))
    with pytest.raises(UserError) as err:
        gate.admit("alice", 9)
    assert err.value.status == 413 and "exceed maximum allowed (8)" in err.value.detail
    gate.admit("alice", 5)
    with pytest.raises(UserError, match="TPS limit exceeded") as err:
        gate.admit("alice", 6)
    assert err.value.status == 429
    gate.admit("alice", 1)
    with pytest.raises(UserError, match="RPS limit exceeded"):
        gate.admit("alice", 1)
    gate.admit("bob", 5)  # bob has his own window
    time.sleep(0.35)
    gate.admit("alice", 5)  # the window slid
    free = Admission(QueueConfig(rps_limit=0, tps_limit=0, max_input_tokens=0))
    for _ in range(50):
        free.admit("alice", 10_000)
