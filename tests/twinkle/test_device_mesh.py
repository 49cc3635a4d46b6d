import numpy as np
import pytest

from twinkle import DeviceGroup, DeviceMesh
from twinkle.errors import ConfigError


def test_from_sizes_orders_dimensions_fsdp_pp_dp_cp_tp():
    mesh = DeviceMesh.from_sizes(tp_size=2, dp_size=2, pp_size=2, fsdp_size=2, cp_size=1)
    assert mesh.mesh_dim_names == ("fsdp", "pp", "dp", "cp", "tp")
    assert mesh.mesh.shape == (2, 2, 2, 1, 2)
    assert np.array_equal(mesh.mesh.ravel(), np.arange(16))
    assert mesh.world_size == 16


def test_dp_is_always_a_dimension_and_last_dimension_is_fastest():
    mesh = DeviceMesh.from_sizes(tp_size=4)
    assert mesh.mesh_dim_names == ("dp", "tp")
    assert mesh.with_rank(3).tp_rank == 3 and mesh.with_rank(3).dp_rank == 0
    assert mesh.get_dim_group_ranks("tp", rank=1) == [0, 1, 2, 3]


def test_per_dimension_ranks_and_world_sizes():
    mesh = DeviceMesh.from_sizes(pp_size=2, tp_size=2, dp_size=2)  # (pp, dp, tp)
    five = mesh.with_rank(5)  # coordinates (1, 0, 1)
    assert (five.pp_rank, five.dp_rank, five.tp_rank) == (1, 0, 1)
    assert five.fsdp_rank is None and five.cp_rank is None
    assert (mesh.pp_world_size, mesh.dp_world_size, mesh.tp_world_size) == (2, 2, 2)
    assert mesh.fsdp_world_size == 0 and mesh.cp_world_size == 0 and mesh.ep_world_size == 0
    # upstream: off the mesh the per-dimension ranks are None but data_rank is 0 (rank 0's share)
    assert mesh.with_rank(99).dp_rank is None and mesh.with_rank(99).data_rank == 0


def test_rank_defaults_to_the_launcher_rank(monkeypatch):
    mesh = DeviceMesh.from_sizes(dp_size=4)
    monkeypatch.setenv("RANK", "2")
    assert mesh.dp_rank == 2 and mesh.data_rank == 2


def test_data_rank_and_world_size_combine_dp_and_fsdp():
    mesh = DeviceMesh.from_sizes(fsdp_size=4, dp_size=2)  # (fsdp, dp): rank = fsdp*2 + dp
    assert mesh.data_world_size == 8
    r = mesh.with_rank(5)  # fsdp 2, dp 1
    assert (r.fsdp_rank, r.dp_rank) == (2, 1)
    assert r.data_rank == 1 * 4 + 2
    assert sorted(mesh.get_data_rank(k) for k in range(8)) == list(range(8))


def test_ulysses_folds_fsdp_ranks_onto_one_data_rank():
    mesh = DeviceMesh.from_sizes(fsdp_size=4, ulysses_size=2)
    assert mesh.data_world_size == 2
    assert [mesh.get_data_rank(r) for r in range(4)] == [0, 0, 1, 1]
    assert mesh.get_collect_ranks() == [0, 2]


def test_get_slice_gives_the_first_ranks_one_extra():
    mesh = DeviceMesh.from_sizes(dp_size=4)
    slices = [mesh.get_slice(10, rank=r) for r in range(4)]
    assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    items = list(range(10))
    assert [item for s in slices for item in items[s]] == items


def test_get_collect_ranks_prefers_the_last_pipeline_stage():
    mesh = DeviceMesh.from_sizes(pp_size=2, dp_size=2, tp_size=2)
    # last pp stage is ranks 4..7; tp index 0 of each dp: 4 and 6
    assert mesh.get_collect_ranks() == [4, 6]


def test_world_size_grows_dp_and_mismatch_is_an_error():
    mesh = DeviceMesh.from_sizes(world_size=8, tp_size=2)
    assert mesh.dp_world_size == 4
    with pytest.raises(ConfigError, match="world_size is 6"):
        DeviceMesh.from_sizes(world_size=6, dp_size=4)


def test_bad_dimension_name_and_bad_size_are_rejected():
    with pytest.raises(ConfigError, match="allowed"):
        DeviceMesh(mesh=np.arange(2), mesh_dim_names=("xp",))
    with pytest.raises(ConfigError, match="tp_size"):
        DeviceMesh.from_sizes(tp_size=0)


def test_ep_fsdp_defaults_to_world_over_ep():
    mesh = DeviceMesh.from_sizes(dp_size=8, ep_size=4)
    assert mesh.ep_fsdp_size == 2 and "ep" not in mesh.mesh_dim_names


def test_mesh_equality_and_pickle():
    import pickle

    mesh = DeviceMesh.from_sizes(fsdp_size=2, dp_size=2)
    assert pickle.loads(pickle.dumps(mesh)) == mesh
    assert mesh != DeviceMesh.from_sizes(dp_size=4)


def test_device_group_fields_and_validation():
    group = DeviceGroup(name="default", ranks=8, device_type="GPU")
    assert group.num_ranks == 8 and group.gpus_per_worker == 1 and group.visible_devices is None
    assert DeviceGroup(name="g", ranks=[0, 1], device_type="CPU").num_ranks == 2
    with pytest.raises(ConfigError, match="device_type"):
        DeviceGroup(name="g", ranks=1, device_type="tpu")
    with pytest.raises(ConfigError, match="ranks"):
        DeviceGroup(name="g", ranks=[])
