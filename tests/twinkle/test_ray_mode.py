"""Ray mode against a real local Ray cluster (2 CPUs): actors per rank, torch.distributed inside them, dispatch,
collect, lazy results, remote iteration, proxies as arguments, remote errors, and fail-fast placement."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

ray = pytest.importorskip("ray")

import twinkle  # noqa: E402
from twinkle import DeviceGroup, DeviceMesh, remote_class, remote_function  # noqa: E402
from twinkle.errors import BatchSizeError, ConfigError  # noqa: E402
from twinkle.infra import _state  # noqa: E402
from twinkle.infra.ray import (  # noqa: E402
    ClusterResourceError,
    LazyResult,
    RemoteCallError,
    RemoteProxy,
    get_device_placement,
    shutdown_ray,
)

pytestmark = pytest.mark.ray

# The components below live in this test module, which Ray workers cannot import: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------- components used by the tests


@remote_class(execute="all")
class Probe:
    """A component with a collective in it, like a model: one actor per rank."""

    def __init__(self, scale: float = 1.0, device_mesh: DeviceMesh = None, fail_on_rank: int | None = None):
        import torch.distributed as dist

        if fail_on_rank is not None and int(os.environ["RANK"]) == fail_on_rank:
            raise RuntimeError(f"refusing to start on rank {fail_on_rank}")
        self.scale = scale
        self.device_mesh = device_mesh
        self.seen: list[int] = []
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.backend = dist.get_backend() if dist.is_initialized() else None

    @remote_function(dispatch="all", collect="none")
    def environment(self):
        import torch.distributed as dist

        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        return {
            **{k: os.environ.get(k) for k in keys},
            "dist_rank": dist.get_rank(),
            "world": self.world,
            "backend": self.backend,
            "mesh": (self.device_mesh.mesh_dim_names, self.device_mesh.world_size, self.device_mesh.data_rank),
            "job_setting": os.environ.get("TWINKLE_TEST_JOB_SETTING"),
            "cwd": os.getcwd(),
        }

    @remote_function(dispatch="slice_dp", collect="flatten")
    def take(self, samples, tag="t"):
        self.seen.extend(samples)
        return [(int(os.environ["RANK"]), tag, s) for s in samples]

    @remote_function(dispatch="all", collect="mean")
    def all_reduced(self, value: float):
        import torch
        import torch.distributed as dist

        t = torch.tensor([value * self.scale * (1 + int(os.environ["RANK"]))])
        dist.all_reduce(t)
        return {"total": t.item(), "rank": float(os.environ["RANK"])}

    @remote_function(dispatch="all", collect="sum")
    def count_seen(self):
        return len(self.seen)

    @remote_function(dispatch="all", collect="first", sync=True)
    def seen_on_first(self):
        return list(self.seen)

    @remote_function(dispatch="slice", collect="last_pp")
    def echo(self, xs):
        return [(int(os.environ["RANK"]), x) for x in xs]

    @remote_function(execute="first", collect="none")
    def only_first(self):
        return int(os.environ["RANK"])

    @remote_function(dispatch="all", collect="first")
    def fail(self, message: str):
        if int(os.environ["RANK"]) == 1:
            raise ValueError(message)
        return "ok"

    def plain(self):
        return int(os.environ["RANK"])

    @remote_function(dispatch="all", collect="first")
    def tensors(self, sent):
        import torch

        return {
            "float": torch.arange(6.0).reshape(2, 3) * (1 + int(os.environ["RANK"])),
            "strided": torch.arange(12).reshape(3, 4).t(),  # not contiguous
            "bf16": torch.ones(2, dtype=torch.bfloat16),
            "grad": torch.ones(2, requires_grad=True),
            "scalar": torch.tensor(3.5),
            "sent_back_doubled": sent * 2,
        }

    @remote_function(dispatch="all", collect="first")
    def nap(self, seconds: float):
        time.sleep(seconds)
        return int(os.environ["RANK"])


@remote_class(execute="first")
class Samples:
    """A dataset-like component: one actor, mesh forced to dp=1."""

    def __init__(self, n: int, device_mesh: DeviceMesh = None):
        self.rows = [{"i": i} for i in range(n)]
        self.device_mesh = device_mesh

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def mesh_sizes(self):
        return self.device_mesh.world_size, self.device_mesh.data_world_size


@remote_class(execute="first")
class Loader:
    """A DataLoader-like component: reads a dataset (a proxy here) and yields global batches."""

    def __init__(self, dataset, batch_size: int, min_batch_size: int | None = None, device_mesh: DeviceMesh = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.min_batch_size = min_batch_size
        self.device_mesh = device_mesh

    def __len__(self):
        return len(self.dataset) // self.batch_size

    def __iter__(self):
        n = len(self.dataset)
        for start in range(0, n, self.batch_size):
            batch = [self.dataset[i] for i in range(start, min(start + self.batch_size, n))]
            if len(batch) < (self.min_batch_size or 1):
                return
            yield batch

    def settings(self):
        return self.batch_size, self.min_batch_size, self.device_mesh.data_world_size


# ---------------------------------------------------------------- fixtures

GROUPS = [DeviceGroup(name="default", ranks=2, device_type="cpu")]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for this module: 2 logical CPUs, no dashboard."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    shutdown_ray()
    ray.shutdown()
    _state.reset()


@pytest.fixture(scope="module")
def ray_groups(ray_cluster):
    twinkle.initialize(mode="ray", groups=GROUPS, global_device_mesh=DeviceMesh.from_sizes(dp_size=2, device_type="cpu"))
    return dict(vars(_state._state))


@pytest.fixture()
def ray_mode(ray_groups):
    # the shared conftest resets twinkle's state before every test; the cluster and its groups stay reserved
    _state.set_state(**{k: v for k, v in ray_groups.items() if k != "worker"})


@pytest.fixture(scope="module")
def probe(ray_groups):
    _state.set_state(**{k: v for k, v in ray_groups.items() if k != "worker"})
    os.environ["TWINKLE_TEST_JOB_SETTING"] = "from-the-driver"  # like TWINKLE_OUTPUT_DIR set by the platform
    try:
        return Probe(scale=2.0, remote_group="default")
    finally:
        del os.environ["TWINKLE_TEST_JOB_SETTING"]


# ---------------------------------------------------------------- tests


def test_all_builds_one_actor_per_rank_with_a_torch_distributed_group(ray_mode, probe):
    assert isinstance(probe, RemoteProxy)
    envs = probe.environment()
    assert isinstance(envs, LazyResult)
    envs = envs.result()
    assert [e["RANK"] for e in envs] == ["0", "1"] and [e["dist_rank"] for e in envs] == [0, 1]
    assert {e["WORLD_SIZE"] for e in envs} == {"2"} and {e["world"] for e in envs} == {2}
    assert {e["backend"] for e in envs} == {"gloo"}
    assert sorted(e["LOCAL_RANK"] for e in envs) == ["0", "1"] and {e["LOCAL_WORLD_SIZE"] for e in envs} == {"2"}
    assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs}) == 1
    # the component sees the global dp=2 mesh, each rank its own data rank, as under torchrun
    assert [e["mesh"] for e in envs] == [(("dp",), 2, 0), (("dp",), 2, 1)]
    # the driver's job settings and working directory reach the ranks, as a launcher's would
    assert {e["job_setting"] for e in envs} == {"from-the-driver"} and {e["cwd"] for e in envs} == {os.getcwd()}
    # a collective across the two actors: (1*2*1) + (1*2*2) = 6 on both ranks; mean of ranks 0 and 1 is 0.5
    assert probe.all_reduced(1.0) == {"total": 6.0, "rank": 0.5}


def test_slice_dp_gives_each_data_rank_its_part_and_flatten_restores_order(ray_mode, probe):
    before = probe.count_seen().result()
    out = probe.take(list(range(5)), tag="b")
    assert list(out) == [(0, "b", 0), (0, "b", 1), (0, "b", 2), (1, "b", 3), (1, "b", 4)]
    assert probe.count_seen() == before + 5


def test_batch_too_small_is_raised_on_the_driver(ray_mode, probe):
    with pytest.raises(BatchSizeError, match="Batch too small: 1 sample"):
        probe.take([42])


def test_collect_modes_sum_first_last_pp_and_execute_first(ray_mode, probe):
    assert probe.echo(["a", "b", "c"]) == [(0, "a"), (0, "b"), (1, "c")]
    assert probe.only_first() == 0
    assert probe.plain() == 0  # undecorated: runs on every rank, rank 0 answers
    assert isinstance(probe.seen_on_first(), list)  # sync=True: a value, not a future


def test_lazy_calls_run_in_order_and_resolve_on_use(ray_mode, probe):
    futures = [probe.take([i, i + 100]) for i in range(3)]
    assert all(isinstance(f, LazyResult) for f in futures)
    seen = probe.seen_on_first()
    assert seen[-3:] == [0, 1, 2]  # rank 0's halves, in submission order
    assert f"{probe.count_seen():d}".isdigit() and probe.count_seen() > 6
    assert futures[2][1] == (1, "t", 102)


def test_remote_error_names_the_method_and_rank_and_keeps_the_remote_traceback(ray_mode, probe):
    with pytest.raises(RemoteCallError) as info:
        probe.fail("bad value 17").result()
    err = info.value
    assert "Probe.fail failed on rank 1" in str(err) and "ValueError: bad value 17" in str(err)
    assert 'raise ValueError(message)' in err.remote_traceback
    assert err.method == "Probe.fail" and err.rank == 1 and err.remote_type == "ValueError"
    assert isinstance(err.__cause__, ValueError)
    assert probe.only_first() == 0  # the actors survive a failed call


def test_an_unread_failed_call_is_raised_by_the_next_call(ray_mode, probe):
    probe.fail("nobody reads me")  # lazy, result dropped
    deadline = time.monotonic() + 30
    with pytest.raises(RemoteCallError, match="nobody reads me"):
        while time.monotonic() < deadline:  # the failure surfaces as soon as the worker has finished
            probe.count_seen().result()


def test_lazy_calls_made_while_the_workers_are_busy_share_one_ray_task_and_keep_their_order(ray_mode, probe):
    from twinkle.infra.ray._call_queue import CALLS

    probe.nap(1.0)  # the workers are busy, so the next lazy calls wait in the driver's queue
    futures = [probe.take([i, i + 100], tag="q") for i in range(4)]
    assert all(f._refs is None for f in futures) and len(CALLS.queue) == 4
    assert not futures[0].done()
    # sending the queue: one run_batch task per worker carries all four calls
    CALLS.flush()
    assert not CALLS.queue
    assert len({f._refs[0].task_id() for f in futures}) == 1 and len({f._refs[1].task_id() for f in futures}) == 1
    assert futures[3][1] == (1, "q", 103)  # results resolve on use
    assert [list(f) for f in futures] == [[(0, "q", i), (1, "q", i + 100)] for i in range(4)]
    assert probe.seen_on_first()[-4:] == [0, 1, 2, 3]  # rank 0's halves, in submission order
    # a non-lazy call goes out with the queue, after it
    probe.nap(0.5)
    queued = probe.take([7, 8], tag="q")
    napping = probe.nap(0.0)  # dispatch='all' with arguments queues as well
    assert queued._refs is None and napping._refs is None
    assert probe.seen_on_first()[-1] == 7 and queued[0] == (0, "q", 7)


def test_a_failure_in_a_batch_names_the_method_and_rank_and_the_later_calls_were_not_run(ray_mode, probe):
    probe.nap(1.0)
    failing = probe.fail("bad batched value")
    after = probe.take([5, 6], tag="after")
    assert failing._refs is None and after._refs is None  # both queued behind the nap (arguments for all too)
    with pytest.raises(RemoteCallError) as info:
        failing.result()
    err = info.value
    assert "Probe.fail failed on rank 1" in str(err) and "ValueError: bad batched value" in str(err)
    assert "raise ValueError(message)" in err.remote_traceback
    assert err.method == "Probe.fail" and err.rank == 1 and err.remote_type == "ValueError"
    assert isinstance(err.__cause__, ValueError)
    with pytest.raises(RemoteCallError, match=r"Probe.take was not run on rank 1: Probe.fail, queued before it, failed"):
        after.result()
    assert probe.only_first() == 0  # the actors survive, and later calls run again


def test_an_unread_failed_call_in_a_batch_is_raised_by_a_later_call(ray_mode, probe):
    probe.nap(0.5)
    probe.fail("queued and never read")
    probe.take([1, 2])
    deadline = time.monotonic() + 30
    with pytest.raises(RemoteCallError, match="queued and never read"):
        while time.monotonic() < deadline:
            probe.count_seen().result()


def test_constructor_error_reaches_the_driver(ray_mode):
    with pytest.raises(RemoteCallError, match=r"Probe.__init__ failed on rank 1 .*refusing to start on rank 1"):
        Probe(fail_on_rank=1, remote_group="default")


def test_first_component_gets_a_dp1_mesh_and_a_ray_dataloader_drops_short_batches(ray_mode, probe):
    samples = Samples(7, remote_group="default")
    assert len(samples) == 7 and samples[3] == {"i": 3}
    assert samples.mesh_sizes() == (1, 1)
    # a dataset proxy handed to another remote component is used there through the same proxy
    loader = Loader(samples, batch_size=2, remote_group="default")
    assert loader.settings() == (2, 2, 1)  # min_batch_size = batch_size under Ray
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b) for b in batches] == [2, 2, 2]  # the short last batch (1 row) is dropped
    # iterating the remote loader on the driver feeds the model-like component, sliced per data rank
    fed = []
    for batch in loader:
        fed.extend(probe.take(batch, tag="loader"))
    assert [(rank, row["i"]) for rank, _, row in fed] == [(0, 0), (1, 1), (0, 2), (1, 3), (0, 4), (1, 5)]
    # the same dataset proxy inside a loader built here on the driver (no remote_group)
    local_loader = Loader(samples, batch_size=4, min_batch_size=4)
    assert not isinstance(local_loader, RemoteProxy)
    assert [[row["i"] for row in b] for b in local_loader] == [[0, 1, 2, 3]]


def test_unknown_group_and_mesh_mismatch_are_config_errors(ray_mode):
    with pytest.raises(ConfigError, match="unknown remote_group 'gpu'; the DeviceGroups are: default"):
        Probe(remote_group="gpu")
    with pytest.raises(ConfigError, match="spans 4 ranks but the group has 2"):
        Probe(device_mesh=DeviceMesh.from_sizes(dp_size=4, device_type="cpu"), remote_group="default")


def test_device_placement_report(ray_mode):
    report = twinkle.get_device_placement()
    assert report == get_device_placement()
    assert "group 'default': 2 rank(s) x 1 CPU on 1 node(s)" in report


def test_tensors_cross_both_ways_with_their_values_dtypes_and_gradients(ray_mode, probe):
    import torch

    out = probe.tensors(torch.tensor([1.0, 2.0])).result()
    assert torch.equal(out["float"], torch.arange(6.0).reshape(2, 3))  # rank 0's
    assert torch.equal(out["strided"], torch.arange(12).reshape(3, 4).t())
    assert out["bf16"].dtype == torch.bfloat16 and torch.equal(out["bf16"], torch.ones(2, dtype=torch.bfloat16))
    assert out["grad"].requires_grad and out["scalar"].item() == 3.5 and out["scalar"].dim() == 0
    assert torch.equal(out["sent_back_doubled"], torch.tensor([2.0, 4.0]))
    out["float"].add_(1)  # the driver owns what it received: writable, not a view of Ray's buffer
    assert out["float"][0, 0].item() == 1.0


def test_cpu_tensors_take_the_array_path_and_the_rest_keep_torch_pickling():
    import torch

    from twinkle.infra.ray._serialization import _deserialize, _serialize

    fast = _serialize(torch.arange(4.0))
    assert fast[0] == "numpy" and torch.equal(_deserialize(fast), torch.arange(4.0))
    for slow in (torch.ones(2, dtype=torch.bfloat16), torch.ones(2, requires_grad=True)):
        kind, payload = _serialize(slow)
        assert kind == "torch"
        back = _deserialize((kind, payload))
        assert back.dtype == slow.dtype and back.requires_grad == slow.requires_grad


def test_futures_nested_in_arguments_are_resolved_and_plain_data_passes_through_untouched(ray_mode, probe):
    from twinkle.infra.ray._lazy import resolve

    count = probe.count_seen()
    token_ids = list(range(50))
    rows = [{"input_ids": token_ids, "seen": count}, {"input_ids": token_ids, "seen": 0}]
    resolved = resolve(rows)
    assert resolved[0]["seen"] == count.result() and not isinstance(resolved[0]["seen"], LazyResult)
    assert resolved[0]["input_ids"] is token_ids and resolved[1] is rows[1]  # nothing copied where nothing changed
    assert resolve(token_ids) is token_ids


def test_a_failure_among_many_unread_calls_is_raised_once_and_the_others_keep_their_results(
    ray_mode, probe, monkeypatch
):
    from twinkle.infra.ray._call_queue import CALLS

    monkeypatch.setattr(CALLS, "max_pending", 4)  # the driver waits for its unread calls sooner
    before = [probe.take([i, i + 100], tag="many") for i in range(3)]
    probe.fail("one of many")
    with pytest.raises(RemoteCallError, match="one of many"):
        for i in range(20):  # the failure surfaces when the driver next waits for its unread calls
            probe.take([i, i + 100], tag="after")
        probe.count_seen().result()
    assert list(before[2]) == [(0, "many", 2), (1, "many", 102)]
    assert probe.only_first() == 0  # raised once: the next calls run


def test_a_local_cluster_keeps_ray_background_work_down_unless_the_environment_says_otherwise():
    from twinkle.infra.ray._cluster import local_system_config

    assert local_system_config({}) == {"worker_niceness": 0, "event_stats": False, "task_events_report_interval_ms": 0}
    assert local_system_config({"RAY_event_stats": "1", "RAY_worker_niceness": "15"}) == {
        "task_events_report_interval_ms": 0
    }


def test_a_group_the_cluster_cannot_hold_fails_at_once_with_the_numbers(ray_mode, probe):
    start = time.monotonic()
    with pytest.raises(ClusterResourceError, match=r"3 CPU asked by DeviceGroup 'big' .* has 2 available \(2 in total\)"):
        twinkle.initialize(mode="ray", groups=[DeviceGroup(name="big", ranks=3, device_type="cpu")])
    assert time.monotonic() - start < 10
    # a failed initialize leaves the groups reserved before (and their actors) untouched
    assert probe.only_first() == 0
    assert "group 'default'" in get_device_placement()


def test_a_failed_remote_call_is_told_to_the_notifier_once_and_still_raised(ray_mode, probe, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the notifier's once-per-error claims live in ./.locks
    told: list[str] = []
    _state.set_state(notifier=told.append, name="notify-test")
    for _ in range(2):
        with pytest.raises(RemoteCallError, match="tell the notifier"):
            probe.fail("tell the notifier").result()
    assert len(told) == 1
    assert "remote call Probe.fail failed" in told[0] and "tell the notifier" in told[0]
    assert "notify-test" in told[0]


def test_an_unread_failure_at_the_end_of_a_script_makes_its_exit_status_1(ray_cluster, tmp_path):
    """A separate driver on this module's cluster: its last (lazy) call fails and nobody reads it."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(
        """
        import twinkle
        from twinkle import DeviceGroup, remote_class, remote_function

        @remote_class(execute="first")
        class Broken:
            @remote_function(dispatch="all")
            def step(self):
                raise KeyError("lost step")

        twinkle.initialize(mode="ray", groups=[DeviceGroup(name="default", ranks=1, device_type="cpu")])
        Broken(remote_group="default").step()
        print("script body finished")
        """
    ))
    shutdown_ray()  # hand this module's CPUs back (the cluster stays up) so the second driver can reserve one
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    env.pop("TWINKLE_MODE", None)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert "script body finished" in proc.stdout
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "a remote call failed and its result was never read" in proc.stderr
    assert "Broken.step failed on rank 0" in proc.stderr and "lost step" in proc.stderr


def test_initialize_gives_ray_mode_its_name_as_namespace_and_full_determinism_to_every_actor(tmp_path):
    """A separate driver that starts its own cluster: ``name`` and ``full_determinism`` must both reach Ray."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(
        """
        import ray
        import torch
        import twinkle
        from twinkle import DeviceGroup, remote_class, remote_function

        @remote_class(execute="first")
        class Kernels:
            @remote_function(dispatch="all", collect="first")
            def deterministic(self):
                return torch.are_deterministic_algorithms_enabled()

        twinkle.initialize(mode="ray", groups=[DeviceGroup(name="default", ranks=1, device_type="cpu")],
                           name="run-42", full_determinism=True)
        print("namespace", ray.get_runtime_context().namespace)
        print("driver deterministic", torch.are_deterministic_algorithms_enabled())
        print("actor deterministic", Kernels(remote_group="default").deterministic())
        """
    ))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TWINKLE_MODE")}
    env["TWINKLE_RAY_NUM_CPUS"] = "1"
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "namespace run-42" in proc.stdout
    assert "driver deterministic True" in proc.stdout
    assert "actor deterministic True" in proc.stdout

