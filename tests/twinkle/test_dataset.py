import json
import time

import datasets as hf
import pandas as pd
import pytest

from twinkle.dataset import (
    Dataset,
    DatasetMeta,
    IterableDataset,
    IterablePackingDataset,
    LazyDataset,
    PackingDataset,
    pack_lengths,
)
from twinkle.errors import DataError, DataFileNotFoundError, HubError, SampleTooLongError, UnknownComponentError
from twinkle.preprocessor import DataFilter, SelfCognitionProcessor
from twinkle.template import Template

ROWS = [{"query": f"q{i} {{{{NAME}}}}", "response": f"r{i} {{{{AUTHOR}}}}", "n": i} for i in range(6)]


def encoded(ds):
    return all(len(row["input_ids"]) == row["length"] > 0 for row in ds)


# ---------------------------------------------------------------- DatasetMeta


def test_meta_needs_an_id_or_data():
    with pytest.raises(ValueError, match="dataset_id"):
        DatasetMeta()


def test_meta_get_id():
    assert DatasetMeta("ms://swift/self-cognition.v2").get_id() == "ms:__swift_self-cognition_v2:default:train"
    assert DatasetMeta("a/b", subset_name="zh", split="test").get_id() == "a_b:zh:test"
    assert DatasetMeta(data=[1]).get_id() != DatasetMeta(data=[1]).get_id()


def test_data_slice_wraps_modulo_the_length():
    ds = Dataset(dataset_meta=DatasetMeta(data=ROWS, data_slice=range(8)))
    assert [row["n"] for row in ds] == [0, 1, 2, 3, 4, 5, 0, 1]
    assert [r["n"] for r in Dataset(dataset_meta=DatasetMeta(data=ROWS, data_slice=[5, -1, 13]))] == [5, 5, 1]


# ---------------------------------------------------------------- loading


def test_local_jsonl_file(self_cognition_file):
    ds = Dataset(dataset_meta=DatasetMeta(str(self_cognition_file), data_slice=range(10)))
    assert len(ds) == 10 and {"query", "response"} <= set(ds.column_names)


@pytest.mark.parametrize("suffix", ["json", "csv", "parquet"])
def test_local_json_csv_parquet(tmp_path, suffix):
    frame = pd.DataFrame({"query": ["a", "b"], "response": ["x", ""], "n": [1, 2]})
    path = tmp_path / f"data.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    elif suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    ds = Dataset(dataset_meta=DatasetMeta(str(path)))
    assert [r["query"] for r in ds] == ["a", "b"]
    assert ds[1]["response"] == ""  # csv: an empty cell stays '' (na_filter=False), not NaN


def test_local_txt(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("first line\nsecond line\n")
    assert [r["text"] for r in Dataset(dataset_meta=DatasetMeta(str(path)))] == ["first line", "second line"]


def test_in_memory_list_dict_generator_and_hf_dataset():
    def gen():
        yield from ROWS[:2]

    for data in (ROWS, {"query": [r["query"] for r in ROWS]}, gen(), gen, hf.Dataset.from_list(ROWS)):
        ds = Dataset(dataset_meta=DatasetMeta(data=data))
        assert ds[0]["query"] == ROWS[0]["query"] and len(ds) in (2, 6)


def test_dataset_dict_is_reduced_to_the_split():
    data = hf.DatasetDict({"train": hf.Dataset.from_list(ROWS), "test": hf.Dataset.from_list(ROWS[:1])})
    assert len(Dataset(dataset_meta=DatasetMeta(data=data, split="test"))) == 1
    assert len(Dataset(dataset_meta=DatasetMeta(data=data, split="validation"))) == 6


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataFileNotFoundError) as err:
        Dataset(dataset_meta=DatasetMeta(str(missing)))
    assert str(missing) in str(err.value) and "check the path" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_unreachable_hub_id_fails_fast_naming_the_id(monkeypatch):
    monkeypatch.setenv("TWINKLE_HUB_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(HubError) as err:
        Dataset(dataset_meta=DatasetMeta("ms://swift/self-cognition"))
    assert "ms://swift/self-cognition" in str(err.value) and "local path" in str(err.value)
    assert time.monotonic() - start < 20


def test_forbid_hf(monkeypatch):
    monkeypatch.setenv("TWINKLE_FORBID_HF", "1")
    with pytest.raises(HubError, match="TWINKLE_FORBID_HF"):
        Dataset(dataset_meta=DatasetMeta("hf://tatsu-lab/alpaca"))


# ---------------------------------------------------------------- transforms


def test_self_cognition_pipeline(self_cognition_file, model_dir, template):
    ds = Dataset(dataset_meta=DatasetMeta(str(self_cognition_file), data_slice=range(20)))
    ds.set_template("Template", model_id=model_dir, max_length=256)
    ds.map(SelfCognitionProcessor("twinkle LLM", "ModelScope community"))
    assert ds.column_names == ["messages"] and ds.check()
    ds.encode()
    assert len(ds) == 20 and encoded(ds) and ds.check()
    row = ds[0]
    assert "twinkle LLM" in template.decode([t for t in row["labels"] if t != -100])


def test_set_template_by_class_instance_or_name(model_dir, template):
    ds = Dataset(dataset_meta=DatasetMeta(data=ROWS))
    ds.set_template(template)
    assert ds.template is template
    ds.set_template(Template, model_id=model_dir, max_length=64)
    assert ds.template.max_length == 64
    with pytest.raises(UnknownComponentError, match="Qwen3_5Template"):
        ds.set_template("NoSuchTemplate", model_id=model_dir)


def test_map_by_function_instance_name_and_init_args():
    ds = Dataset(dataset_meta=DatasetMeta(data=ROWS))
    ds.map(lambda b: {"double": [n * 2 for n in b["n"]]})
    assert ds[3]["double"] == 6 and "query" in ds.column_names  # a function adds columns
    ds.map("SelfCognitionProcessor", init_args={"model_name": "N", "model_author": "A"})
    assert ds.column_names == ["messages"]  # a Preprocessor replaces them
    assert ds[0]["messages"][1]["content"] == "q0 N"
    with pytest.raises(UnknownComponentError, match="AlpacaProcessor"):
        ds.map("NoSuchProcessor")


def test_filter_by_function_and_data_filter():
    class Even(DataFilter):
        def __call__(self, row):
            return row["n"] % 2 == 0

    ds = Dataset(dataset_meta=DatasetMeta(data=ROWS))
    ds.filter(Even())
    assert [r["n"] for r in ds] == [0, 2, 4]
    ds.filter(lambda row: row["n"] > 0)
    assert [r["n"] for r in ds] == [2, 4]


def test_encode_needs_a_template_and_drops_deleted_rows(model_dir):
    rows = [{"query": "hi", "response": "yo"}, {"query": "long " * 200, "response": "x"}]
    ds = Dataset(dataset_meta=DatasetMeta(data=rows))
    ds.map(SelfCognitionProcessor())
    with pytest.raises(DataError, match="set_template"):
        ds.encode()
    ds.set_template("Template", model_id=model_dir, max_length=64, truncation_strategy="delete")
    ds.encode()
    assert len(ds) == 1 and encoded(ds)


def test_encode_raise_and_split(model_dir):
    rows = [{"query": "long " * 200, "response": "x"}, {"query": "hi", "response": "yo"}]
    ds = Dataset(dataset_meta=DatasetMeta(data=rows))
    ds.map(SelfCognitionProcessor())
    ds.set_template("Template", model_id=model_dir, max_length=64)
    with pytest.raises(SampleTooLongError, match="max_length=64"):
        ds.encode()
    ds.set_template("Template", model_id=model_dir, max_length=64, truncation_strategy="split")
    ds.encode()
    assert len(ds) > 2 and encoded(ds) and all(r["length"] <= 64 for r in ds)
    assert "messages" in ds.column_names  # other columns ride along with every chunk


def test_check_reports_bad_rows():
    ds = Dataset(dataset_meta=DatasetMeta(data=[{"messages": [{"role": "user", "content": "hi"}]}, {"messages": []}]))
    with pytest.raises(DataError, match="row 1: no messages"):
        ds.check()


def test_mix_interleave_and_concat():
    a = DatasetMeta(data=[{"x": i} for i in range(3)])
    b = DatasetMeta(data=[{"x": 10 + i} for i in range(5)])
    ds = Dataset(dataset_meta=a)
    ds.add_dataset(b)
    ds.map(lambda batch: {"x": [v + 100 for v in batch["x"]]}, dataset_meta=b)
    ds.mix_dataset(interleave=True)
    assert [r["x"] for r in ds] == [0, 110, 1, 111, 2, 112]  # stops when the first source runs out
    ds = Dataset(dataset_meta=a)
    ds.add_dataset(b)
    ds.mix_dataset(interleave=False)
    assert [r["x"] for r in ds] == [0, 1, 2, 10, 11, 12, 13, 14]


def test_save_as_jsonl_csv_parquet(tmp_path):
    ds = Dataset(dataset_meta=DatasetMeta(data=ROWS))
    for name in ("out.jsonl", "out.json", "out.csv", "out.parquet"):
        path = ds.save_as(tmp_path / name)
        back = Dataset(dataset_meta=DatasetMeta(path))
        assert [r["n"] for r in back] == list(range(6)), name
    assert (tmp_path / "out.json").read_text().startswith("{")  # .json is written as json lines
    with pytest.raises(ValueError, match="jsonl"):
        ds.save_as(tmp_path / "out.xlsx")


# ---------------------------------------------------------------- variants


def test_lazy_dataset_defers_map_and_encode(model_dir):
    calls = []

    def spy(batch):
        calls.append(len(batch["query"]))
        return batch

    ds = LazyDataset(dataset_meta=DatasetMeta(data=ROWS))
    ds.map(spy)
    ds.map(SelfCognitionProcessor("N", "A"))
    ds.set_template("Template", model_id=model_dir)
    ds.encode()
    assert calls == []
    row = ds[2]
    assert calls == [1] and row["messages"][1]["content"] == "q2 N" and row["length"] > 0


def test_lazy_filter_is_immediate_and_interleave_wraps(model_dir):
    ds = LazyDataset(dataset_meta=DatasetMeta(data=[{"x": i} for i in range(3)]))
    ds.add_dataset(DatasetMeta(data=[{"x": 10 + i} for i in range(5)]))
    ds.mix_dataset(interleave=True)
    assert len(ds) == 2 * 5
    assert [ds[i]["x"] for i in range(10)] == [0, 10, 1, 11, 2, 12, 0, 13, 1, 14]
    ds.filter(lambda row: row["x"] >= 10)
    assert [r["x"] for r in ds] == [10, 11, 12, 13, 14]


def test_packing_dataset_bins_rows_up_to_max_length(self_cognition_file, model_dir):
    ds = PackingDataset(DatasetMeta(str(self_cognition_file), data_slice=range(30)))
    ds.set_template("Template", model_id=model_dir, max_length=128)
    ds.map(SelfCognitionProcessor())
    ds.encode()
    total = sum(r["length"] for r in ds)
    ds.pack_dataset()
    rows = list(ds)
    assert len(rows) < 30 and sum(r["length"] for r in rows) == total
    assert all(r["length"] <= 128 and len(r["input_ids"]) == len(r["labels"]) == r["length"] for r in rows)
    assert sum(r["position_ids"].count(0) for r in rows) == 30  # every sample keeps its own positions


def test_pack_lengths_first_fit_decreasing():
    bins = pack_lengths([5, 3, 4, 2, 6], capacity=8)
    # largest first, each into the first bin with room: 6 | 5 | 4, then 3 joins 5 and 2 joins 6
    assert sorted(sorted(b) for b in bins) == [[0, 1], [2], [3, 4]]
    assert pack_lengths([10], capacity=8) == [[0]]


def test_iterable_dataset_streams(self_cognition_file, model_dir):
    ds = IterableDataset(DatasetMeta(str(self_cognition_file), data_slice=range(10)))
    ds.map(SelfCognitionProcessor())
    ds.filter(lambda row: "ChatGPT" not in row["messages"][1]["content"])
    ds.set_template("Template", model_id=model_dir)
    ds.encode()
    rows = list(ds)
    assert 0 < len(rows) <= 10 and all(r["length"] > 0 for r in rows)
    with pytest.raises(TypeError, match="no length"):
        len(ds)


def test_iterable_packing_dataset(self_cognition_file, model_dir):
    ds = IterablePackingDataset(DatasetMeta(str(self_cognition_file), data_slice=range(20)), packing_interval=8)
    ds.set_template("Template", model_id=model_dir, max_length=128)
    ds.map(SelfCognitionProcessor())
    ds.encode()
    rows = list(ds)
    assert sum(r["position_ids"].tolist().count(0) for r in rows) == 20
    assert all(r["length"] <= 128 for r in rows)
