import logging
import pickle
import random
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch

import twinkle
from scheduler.testing.net import free_port
from twinkle import DeviceGroup, DeviceMesh, remote_class, remote_function
from twinkle.errors import ConfigError
from twinkle.infra import _state


@remote_class(execute="first")
class Component:
    def __init__(self, value: int = 0, device_mesh: DeviceMesh | None = None, min_batch_size: int | None = None):
        self.value = value
        self.device_mesh = device_mesh
        self.min_batch_size = min_batch_size


@remote_class(execute="first")
class Loader:
    def __init__(self, dataset, batch_size: int, min_batch_size: int | None = None, device_mesh: DeviceMesh = None):
        self.batch_size, self.min_batch_size, self.device_mesh = batch_size, min_batch_size, device_mesh


@remote_class()
class Child(Component):
    def __init__(self, value: int = 0, extra: str = "x", **kwargs):
        super().__init__(value, **kwargs)
        self.extra = extra


def test_initialize_local_defaults_to_a_dp_mesh_over_the_world():
    twinkle.initialize(mode="local")
    assert _state.get_mode() == "local"
    mesh = _state.get_global_mesh()
    assert mesh.mesh_dim_names == ("dp",) and mesh.world_size == 1
    assert [g.name for g in _state.get_groups()] == ["default"]
    assert "global mesh" in twinkle.get_device_placement()
    assert twinkle.is_master()


def test_twinkle_mode_env_sets_the_default(monkeypatch):
    monkeypatch.setenv("TWINKLE_MODE", "local")
    twinkle.initialize()
    assert _state.get_mode() == "local"
    monkeypatch.setenv("TWINKLE_MODE", "spark")
    with pytest.raises(ConfigError, match=r"'local'.*'ray'"):
        twinkle.initialize()


def test_mesh_must_match_world_size():
    with pytest.raises(ConfigError, match="WORLD_SIZE is 1"):
        twinkle.initialize(global_device_mesh=DeviceMesh.from_sizes(dp_size=2))


def test_ray_mode_needs_groups():
    with pytest.raises(ConfigError, match="groups"):
        twinkle.initialize(mode="ray")


def test_initialize_seeds_python_numpy_and_torch():
    twinkle.initialize(seed=7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    twinkle.initialize(seed=7, full_determinism=True)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


def test_remote_class_injects_the_global_mesh_and_min_batch_size():
    mesh = DeviceMesh.from_sizes(dp_size=1)
    twinkle.initialize(global_device_mesh=mesh)
    c = Component(3)
    assert c.device_mesh is mesh and c.min_batch_size == 1
    own = DeviceMesh.from_sizes(dp_size=1, device_type="cpu")
    assert Component(device_mesh=own, min_batch_size=5).device_mesh is own
    assert Component(device_mesh=own, min_batch_size=5).min_batch_size == 5


def test_without_initialize_nothing_is_injected():
    assert Component().device_mesh is None


def test_remote_group_is_dropped_in_local_mode_with_a_debug_line(caplog):
    twinkle.initialize()
    with caplog.at_level(logging.DEBUG, logger="twinkle"):
        c = Component(1, remote_group="default")
    assert c.value == 1
    assert "remote_group='default' ignored" in caplog.text


def test_decorated_class_stays_a_real_class():
    twinkle.initialize()
    child = Child(4, extra="y", remote_group="default")
    assert isinstance(child, Component) and type(child) is Child
    assert child.device_mesh is not None
    restored = pickle.loads(pickle.dumps(child))
    assert (restored.value, restored.extra) == (4, "y")
    assert Component._twinkle_remote_class == {"execute": "first"}
    assert Child._twinkle_remote_class == {"execute": "all"}


def test_remote_class_rejects_unknown_execute():
    with pytest.raises(ConfigError, match="execute"):
        remote_class(execute="some")


def test_remote_function_stores_its_options_and_leaves_the_function_alone():
    def f(x):
        return x + 1

    g = remote_function(dispatch="slice_dp", collect="mean", lazy_collect=False)(f)
    assert g is f and g(1) == 2
    assert g._twinkle_remote == {
        "dispatch": "slice_dp", "execute": "all", "collect": "mean", "sync": False, "lazy_collect": False,
    }
    with pytest.raises(ConfigError, match="collect"):
        remote_function(collect="median")


def _install_ray_hooks(monkeypatch):
    calls = {}
    fake = types.ModuleType("twinkle.infra.ray")

    def init_ray(**kw):
        calls["init_ray"] = kw

    def make_remote(cls, execute, args, kwargs):
        calls["make_remote"] = (cls, execute, args, kwargs)
        return "proxy"

    fake.init_ray, fake.make_remote = init_ray, make_remote
    monkeypatch.setitem(sys.modules, "twinkle.infra.ray", fake)
    return calls


def test_ray_mode_calls_the_ray_hooks(monkeypatch):
    """The contract with twinkle.infra.ray: init_ray at initialize, make_remote for remote_group on the driver."""
    calls = _install_ray_hooks(monkeypatch)
    groups = [DeviceGroup(name="default", ranks=2, device_type="CPU")]
    mesh = DeviceMesh.from_sizes(dp_size=2, device_type="cpu")
    twinkle.initialize(mode="ray", groups=groups, global_device_mesh=mesh, nproc_per_node=2, seed=3, name="run-7",
                       full_determinism=True, ncpu_proc_per_node=4)
    assert calls["init_ray"] == {
        "groups": groups, "nproc_per_node": 2, "ncpu_proc_per_node": 4, "global_device_mesh": mesh, "seed": 3,
        "name": "run-7", "full_determinism": True,
    }
    assert Child(1, remote_group="default") == "proxy"
    assert calls["make_remote"] == (Child, "all", (1,), {"remote_group": "default"})
    local = Child(2)  # no remote_group: built here, on the driver, which is one process and not a rank
    assert isinstance(local, Child)
    assert local.device_mesh.data_world_size == 1 and local.device_mesh.world_size == 1
    assert twinkle.infra.get_global_mesh() is mesh  # the real mesh stays what the actors get
    loader = Loader([1, 2, 3], batch_size=4)
    assert loader.device_mesh.data_world_size == 1 and loader.min_batch_size == 4  # whole global batches
    _state.mark_worker()  # inside a Ray worker, components are built locally
    assert isinstance(Child(1, remote_group="default"), Child)


@pytest.mark.slow
def test_torchrun_initializes_torch_distributed_and_ranks_get_their_slices(tmp_path):
    script = tmp_path / "init.py"
    script.write_text(textwrap.dedent("""
        import os
        import torch.distributed as dist
        import twinkle
        from twinkle.dataloader import DataLoader
        twinkle.initialize()
        batches = [[row["i"] for row in b] for b in DataLoader([{"i": i} for i in range(8)], batch_size=4)]
        # one write per rank: the two ranks share torchrun's stdout, and print() writes piece by piece
        line = " ".join(map(str, ["RESULT", dist.get_rank(), dist.get_world_size(), dist.get_backend(),
                                  twinkle.is_master(), batches]))
        os.write(1, (line + "\\n").encode())  # a single write to a pipe is atomic
    """))
    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), str(script)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = sorted(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    assert results == [
        "RESULT 0 2 gloo True [[0, 1], [4, 5]]",
        "RESULT 1 2 gloo False [[2, 3], [6, 7]]",
    ]


