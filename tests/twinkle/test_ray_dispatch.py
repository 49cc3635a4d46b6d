"""Ray mode's dispatch and collect rules, as pure functions (no Ray started), and local mode with remote_group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinkle.errors import BatchSizeError, ConfigError
from twinkle.infra.ray import collect_results, dispatch_args
from twinkle.infra.ray._dispatch import result_ranks
from twinkle.utils.device_mesh import DeviceMesh


def test_all_gives_every_worker_the_same_arguments():
    calls = dispatch_args("all", ([1, 2, 3],), {"lr": 0.1}, 3)
    assert calls == [(([1, 2, 3],), {"lr": 0.1})] * 3


def test_slice_splits_lists_evenly_first_workers_get_the_extra():
    calls = dispatch_args("slice", ([0, 1, 2, 3, 4],), {"tag": "x", "ys": (5, 6, 7, 8, 9)}, 2)
    assert calls[0] == (([0, 1, 2],), {"tag": "x", "ys": (5, 6, 7)})
    assert calls[1] == (([3, 4],), {"tag": "x", "ys": (8, 9)})


def test_slice_dp_follows_data_ranks_and_repeats_for_tensor_parallel_peers():
    mesh = DeviceMesh.from_sizes(dp_size=2, tp_size=2, device_type="cpu")  # ranks 0,1 -> dp 0; 2,3 -> dp 1
    batch = [{"i": i} for i in range(5)]
    calls = dispatch_args("slice_dp", (), {"inputs": batch, "temperature": 1.0}, 4, mesh)
    parts = [[row["i"] for row in kw["inputs"]] for _, kw in calls]
    assert parts == [[0, 1, 2], [0, 1, 2], [3, 4], [3, 4]]
    assert all(kw["temperature"] == 1.0 for _, kw in calls)


def test_slice_dp_splits_collated_tensors_and_arrays_along_the_batch():
    mesh = DeviceMesh.from_sizes(dp_size=2, device_type="cpu")
    batch = {"input_ids": torch.arange(12).reshape(4, 3), "labels": np.arange(4)}
    calls = dispatch_args("slice_dp", (batch,), {}, 2, mesh)
    assert calls[1][0][0]["input_ids"].tolist() == [[6, 7, 8], [9, 10, 11]]
    assert calls[1][0][0]["labels"].tolist() == [2, 3]


def test_a_single_sample_dict_is_not_split():
    mesh = DeviceMesh.from_sizes(dp_size=2, device_type="cpu")
    sample = {"input_ids": [1, 2, 3], "name": "x"}
    calls = dispatch_args("slice_dp", (sample,), {}, 2, mesh)
    assert calls[0][0][0] is sample and calls[1][0][0] is sample


def test_slice_dp_batch_too_small_says_what_to_do():
    mesh = DeviceMesh.from_sizes(dp_size=4, device_type="cpu")
    with pytest.raises(BatchSizeError, match=r"Batch too small: 3 sample\(s\) for 4 data-parallel ranks.*at least 4"):
        dispatch_args("slice_dp", ([1, 2, 3],), {}, 4, mesh)


def test_slice_dp_needs_a_mesh_covering_the_workers():
    with pytest.raises(ConfigError, match="needs a DeviceMesh covering the 2 workers"):
        dispatch_args("slice_dp", ([1, 2],), {}, 2, DeviceMesh.from_sizes(dp_size=4, device_type="cpu"))


def test_unknown_modes_list_the_known_ones():
    with pytest.raises(ConfigError, match="unknown dispatch 'scatter'; use one of all, slice, slice_dp"):
        dispatch_args("scatter", (), {}, 2)
    with pytest.raises(ConfigError, match="unknown collect 'median'"):
        collect_results("median", [1, 2])


def test_custom_dispatch_and_collect_functions():
    calls = dispatch_args(lambda n, xs: [((x,), {}) for x in xs[:n]], ([7, 8, 9],), {}, 2)
    assert calls == [((7,), {}), ((8,), {})]
    with pytest.raises(ConfigError, match="must return 2"):
        dispatch_args(lambda n, xs: [((xs,), {})], ([1],), {}, 2)
    assert collect_results(lambda results: max(results), [3, 9, 4]) == 9
    mesh = DeviceMesh.from_sizes(dp_size=3, device_type="cpu")
    assert collect_results(lambda results, m: m.data_world_size * sum(results), [1, 2, 3], mesh) == 18


def test_collect_none_first_flatten():
    assert collect_results("none", [5]) == 5
    assert collect_results("none", [5, 6]) == [5, 6]
    assert collect_results("first", [{"a": 1}, {"a": 2}]) == {"a": 1}
    assert collect_results("flatten", [[1, 2], [3], []]) == [1, 2, 3]
    flat = collect_results("flatten", [{"x": torch.ones(2, 3)}, {"x": torch.zeros(1, 3)}])
    assert flat["x"].shape == (3, 3)


def test_collect_sum_and_mean_work_key_by_key():
    results = [{"loss": 1.0, "n": torch.tensor(2.0), "note": "same"}, {"loss": 3.0, "n": torch.tensor(4.0), "note": "same"}]
    mean = collect_results("mean", results)
    assert mean["loss"] == pytest.approx(2.0) and float(mean["n"]) == pytest.approx(3.0) and mean["note"] == "same"
    total = collect_results("sum", results)
    assert total["loss"] == pytest.approx(4.0) and float(total["n"]) == pytest.approx(6.0)
    assert collect_results("mean", [{"acc": "0.5"}, {"acc": "1.0"}])["acc"] == pytest.approx(0.75)
    assert collect_results("sum", [np.array([1, 2]), np.array([3, 4])]).tolist() == [4, 6]


def test_last_pp_takes_one_result_per_data_rank_from_the_last_stage():
    mesh = DeviceMesh.from_sizes(pp_size=2, dp_size=2, device_type="cpu")  # ranks: pp0 -> 0,1 ; pp1 -> 2,3
    ranks = result_ranks("last_pp", "slice_dp", 4, mesh)
    assert ranks == [2, 3]
    results = [["stage0-a"], ["stage0-b"], ["a"], ["b"]]
    assert collect_results("last_pp", [results[r] for r in ranks], mesh) == ["a", "b"]
    # flatten after slice_dp keeps one copy per data rank (tp peers hold the same samples)
    tp_mesh = DeviceMesh.from_sizes(dp_size=2, tp_size=2, device_type="cpu")
    assert result_ranks("flatten", "slice_dp", 4, tp_mesh) == [0, 2]
    assert result_ranks("flatten", "all", 4, tp_mesh) == [0, 1, 2, 3]


def test_local_mode_accepts_and_drops_remote_group():
    """The usage example passes remote_group=; without Ray the component is simply built here."""
    import twinkle
    from twinkle import remote_class, remote_function

    @remote_class(execute="all")
    class Doubler:
        def __init__(self, factor: int = 2, device_mesh: DeviceMesh = None):
            self.factor = factor
            self.device_mesh = device_mesh

        @remote_function(dispatch="slice_dp", collect="flatten")
        def run(self, xs):
            return [x * self.factor for x in xs]

    twinkle.initialize(mode="local")
    component = Doubler(factor=3, remote_group="default")
    assert type(component) is Doubler
    assert component.run([1, 2]) == [3, 6]
    assert component.device_mesh.world_size == 1


def test_mean_of_a_forward_backward_output_averages_the_loss_and_rejoins_per_sample_tensors():
    rank0 = {"loss": 2.0, "logps": torch.full((2, 3), -1.0)}
    rank1 = {"loss": 4.0, "logps": torch.full((1, 5), -2.0)}
    merged = collect_results("mean", [rank0, rank1])
    assert merged["loss"] == pytest.approx(3.0)
    assert merged["logps"].shape == (3, 5)
    assert merged["logps"][0].tolist() == [-1.0, -1.0, -1.0, 0.0, 0.0]
    assert merged["logps"][2].tolist() == [-2.0] * 5
