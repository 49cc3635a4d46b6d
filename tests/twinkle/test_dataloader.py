import logging

import pytest
import torch

import twinkle
from twinkle import DeviceMesh
from twinkle.dataloader import DataLoader
from twinkle.dataset import Dataset, DatasetMeta, IterableDataset
from twinkle.errors import BatchSizeError, DataError
from twinkle.preprocessor import SelfCognitionProcessor
from twinkle.processor import InputProcessor

ROWS = [{"input_ids": [i + 1, i + 2], "labels": [i + 2, -100], "i": i} for i in range(10)]


def ids(batches):
    return [[row["i"] for row in batch] for batch in batches]


def test_batch_size_is_global_and_each_data_rank_gets_its_slice():
    mesh = DeviceMesh.from_sizes(fsdp_size=2, dp_size=2)  # data world size 4
    per_rank = [ids(DataLoader(ROWS * 2, batch_size=8, device_mesh=mesh.with_rank(r))) for r in range(4)]
    assert all(len(batches) == 3 for batches in per_rank)
    data_ranks = [mesh.get_data_rank(r) for r in range(4)]
    for step in range(2):
        by_data_rank = [rows for _, rows in sorted(zip(data_ranks, [b[step] for b in per_rank], strict=True))]
        # data rank k gets rows 2k, 2k+1 of the global batch; together they are the whole batch, in order
        assert [row for rows in by_data_rank for row in rows] == [i % 10 for i in range(step * 8, step * 8 + 8)]
        assert all(len(rows) == 2 for rows in by_data_rank)
    # the last global batch has 4 rows: one each
    assert [b[2] for b in per_rank] == [[6], [8], [7], [9]]  # data ranks of ranks 0..3 are 0, 2, 1, 3


def test_len_counts_global_batches_and_min_batch_size_drops_a_short_tail():
    assert len(DataLoader(ROWS, batch_size=4)) == 3
    loader = DataLoader(ROWS, batch_size=4, min_batch_size=4)
    assert len(loader) == 2 and len(list(loader)) == 2


def test_batch_size_not_divisible_by_the_data_world_size_says_so():
    mesh = DeviceMesh.from_sizes(dp_size=4)
    with pytest.raises(BatchSizeError) as err:
        DataLoader(ROWS, batch_size=6, device_mesh=mesh)
    assert "data world size 4" in str(err.value) and "use 4 or 8" in str(err.value)
    with pytest.raises(BatchSizeError, match="multiple"):
        DataLoader(ROWS, batch_size=2, device_mesh=mesh)


def test_global_mesh_and_min_batch_size_are_injected():
    twinkle.initialize(global_device_mesh=DeviceMesh.from_sizes(dp_size=1, device_type="cpu"))
    loader = DataLoader(ROWS, batch_size=4)
    assert loader.device_mesh.world_size == 1 and loader.min_batch_size == 1


def test_deterministic_order_with_a_seed_and_optional_shuffle():
    plain = ids(DataLoader(ROWS, batch_size=5))
    assert plain == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    a = ids(DataLoader(ROWS, batch_size=5, shuffle=True, seed=3))
    b = ids(DataLoader(ROWS, batch_size=5, shuffle=True, seed=3))
    c = ids(DataLoader(ROWS, batch_size=5, shuffle=True, seed=4))
    assert a == b and a != plain and a != c and sorted(row for part in a for row in part) == list(range(10))
    loader = DataLoader(ROWS, batch_size=5, shuffle=True, seed=3)
    assert ids(loader) == a and ids(loader) != a  # the next epoch is reshuffled


def test_skip_consumed_samples_resumes_where_the_state_left_off():
    full = ids(DataLoader(ROWS, batch_size=2, shuffle=True, seed=1))
    first = DataLoader(ROWS, batch_size=2, shuffle=True, seed=1)
    it = iter(first)
    seen = [next(it), next(it)]
    state = first.get_state()
    assert state == {"consumed_train_samples": 4}
    resumed = DataLoader(ROWS, batch_size=2, shuffle=True, seed=1)
    resumed.skip_consumed_samples(state["consumed_train_samples"])
    assert ids(seen) + ids(resumed) == full
    assert resumed.get_state() == {"consumed_train_samples": 10}


class Flaky(torch.utils.data.Dataset):
    def __init__(self, bad):
        self.bad = bad

    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i in self.bad:
            raise ValueError(f"broken sample {i}")
        return {"i": i}


def test_failing_samples_are_replaced_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="twinkle"):
        batches = list(DataLoader(Flaky({3}), batch_size=5))
    assert "skipping sample 3" in caplog.text and "broken sample 3" in caplog.text
    first = [row["i"] for row in batches[0]]
    assert len(first) == 5 and 3 not in first and first[:3] == [0, 1, 2]


def test_retries_are_bounded():
    with pytest.raises(DataError, match="2 replacement"):
        list(DataLoader(Flaky(set(range(10))), batch_size=2, max_retries=2))


class Batched:
    """A map-style dataset that can read several rows at once, and counts how it is read."""

    def __init__(self, empty=(), broken_batches=False):
        self.rows = [{"i": i} for i in range(10)]
        self.empty, self.broken_batches = set(empty), broken_batches
        self.row_reads, self.batch_reads = 0, 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.row_reads += 1
        return {} if i in self.empty else self.rows[i]

    def __getitems__(self, indices):
        self.batch_reads += 1
        if self.broken_batches:
            raise OSError("the batch read failed")
        return [{} if i in self.empty else self.rows[i] for i in indices]


def test_a_batch_is_read_at_once_where_the_dataset_can():
    data = Batched()
    assert ids(DataLoader(data, batch_size=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert data.batch_reads == 3 and data.row_reads == 0


def test_an_empty_row_of_a_batch_read_is_replaced_like_a_failing_one(caplog):
    data = Batched(empty={2})
    with caplog.at_level(logging.WARNING, logger="twinkle"):
        first = ids(DataLoader(data, batch_size=5))[0]
    assert "skipping sample 2 (it is empty)" in caplog.text
    assert len(first) == 5 and 2 not in first and first[:2] == [0, 1]


def test_a_failing_batch_read_falls_back_to_reading_row_by_row():
    data = Batched(broken_batches=True)
    assert ids(DataLoader(data, batch_size=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert data.row_reads == 10


def test_a_twinkle_dataset_reads_several_rows_like_one_by_one():
    ds = Dataset(DatasetMeta(data=ROWS))
    assert ds.__getitems__([1, 7, 3]) == [ds[1], ds[7], ds[3]]


def test_set_processor_yields_tensors():
    loader = DataLoader(ROWS, batch_size=4)
    loader.set_processor(InputProcessor, padding_side="left")
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (4, 2) and batch["input_ids"].dtype == torch.long


def test_worker_processes_give_the_same_batches():
    assert ids(DataLoader(ROWS, batch_size=4, num_workers=2)) == ids(DataLoader(ROWS, batch_size=4))


def test_iterable_dataset_is_batched_in_stream_order():
    ds = IterableDataset(DatasetMeta(data=ROWS))
    loader = DataLoader(ds, batch_size=4)
    assert ids(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    loader.skip_consumed_samples(4)
    assert ids(loader)[0] == [4, 5, 6, 7]


def test_encoded_dataset_end_to_end(self_cognition_file, model_dir):
    ds = Dataset(dataset_meta=DatasetMeta(str(self_cognition_file), data_slice=range(16)))
    ds.set_template("Template", model_id=model_dir, max_length=256)
    ds.map(SelfCognitionProcessor("twinkle LLM", "ModelScope community"))
    ds.encode()
    loader = DataLoader(dataset=ds, batch_size=8)
    batches = list(loader)
    assert len(loader) == 2 and [len(b) for b in batches] == [8, 8]
    micro = InputProcessor().collate_fn(batches[0], micro_batch_size=4)
    assert len(micro) == 2 and micro[0]["labels"].shape[0] == 4
