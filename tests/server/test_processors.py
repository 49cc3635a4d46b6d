"""Server-side datasets and dataloaders (http.md §7, §9.4) through ``twinkle_client`` against a real server.

The pipeline on the server gives the same rows and batches as the same pipeline run locally; the server never
reads or writes its own files for a tenant, runs no pass-through keywords, and keeps tenants' objects apart.
"""

from __future__ import annotations

import json

import pytest
from server_helpers import Tenant, new_token

pytestmark = pytest.mark.slow

ROWS = 12


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    from twinkle.assets import self_cognition_path

    with open(self_cognition_path()) as f:
        return [json.loads(line) for line in f][:ROWS]


@pytest.fixture()
def client(server_url):
    from twinkle_client import init_twinkle_client

    c = init_twinkle_client(server_url, api_key=new_token(), session_heartbeat_interval=0.5)
    yield c
    c.close()


def remote_pipeline(rows):
    from twinkle.dataset import DatasetMeta
    from twinkle_client.dataset import Dataset

    ds = Dataset(dataset_meta=DatasetMeta(data=rows, data_slice=range(ROWS - 2)))
    ds.set_template("Template", model_id="tiny", max_length=24, truncation_strategy="right")
    ds.map("SelfCognitionProcessor", init_args={"model_name": "twinkle LLM", "model_author": "ModelScope"})
    ds.encode()
    return ds


def local_pipeline(rows, model_dir):
    from twinkle.dataset import Dataset, DatasetMeta

    ds = Dataset(dataset_meta=DatasetMeta(data=rows, data_slice=range(ROWS - 2)))
    ds.set_template("Template", model_id=str(model_dir), max_length=24, truncation_strategy="right")
    ds.map("SelfCognitionProcessor", init_args={"model_name": "twinkle LLM", "model_author": "ModelScope"})
    ds.encode()
    return ds


def test_a_server_side_dataset_and_dataloader_match_the_local_pipeline(client, rows, tiny_model_dir):
    import twinkle
    from twinkle.dataloader import DataLoader as LocalLoader
    from twinkle_client.dataloader import DataLoader
    from twinkle_client.model import MultiLoraTransformersModel

    remote = remote_pipeline(rows)
    local = local_pipeline(rows, tiny_model_dir)
    assert len(remote) == len(local) == ROWS - 2
    for i in (0, 5, ROWS - 3):
        assert remote[i]["input_ids"] == list(local[i]["input_ids"])
        assert remote[i]["labels"] == list(local[i]["labels"])

    twinkle.initialize(mode="local")
    loader = DataLoader(dataset=remote, batch_size=4, min_batch_size=2)
    local_loader = LocalLoader(dataset=local, batch_size=4, min_batch_size=2)
    assert len(loader) == len(local_loader) == 3
    batches = list(loader)  # ends with the server's 410 -> StopIteration
    expected = list(local_loader)
    assert [[r["input_ids"] for r in b] for b in batches] == [[list(r["input_ids"]) for r in b] for b in expected]
    assert list(loader) == batches  # iterating again starts a fresh pass

    # the batches feed the model as they are
    model = MultiLoraTransformersModel("tiny")
    from peft import LoraConfig

    model.add_adapter_to_model("default", LoraConfig(r=4, lora_alpha=16, target_modules="all-linear"))
    assert float(model.forward_backward(inputs=batches[0][:2])["loss"]) > 0
    model.remove_adapter()


def test_a_dataset_never_reads_a_server_path(client, tmp_path):
    """A file on the server's disk (here: written by the test next to the server) is not a tenant's data source."""
    from twinkle.dataset import DatasetMeta
    from twinkle_client import TwinkleClientError
    from twinkle_client.dataset import Dataset

    secret = tmp_path / "server-secret.jsonl"
    secret.write_text(json.dumps({"messages": [{"role": "user", "content": "the server's secret"}]}) + "\n")
    for source in (str(secret), f"../{secret}", "~/.bashrc.jsonl"):
        with pytest.raises(TwinkleClientError, match="never a path on the server") as err:
            Dataset(dataset_meta=DatasetMeta(source))
        assert err.value.status == 400
    ds = Dataset(dataset_meta=DatasetMeta(data=[{"text": "mine"}]))
    with pytest.raises(TwinkleClientError, match="never a path on the server"):
        ds.add_dataset(dataset_meta=DatasetMeta(str(secret)))


def test_server_files_and_processes_are_out_of_reach(client, tmp_path, tiny_model_dir):
    from twinkle.dataset import DatasetMeta
    from twinkle_client import TwinkleClientError
    from twinkle_client.dataset import Dataset, PackingDataset

    ds = Dataset(dataset_meta=DatasetMeta(data=[{"text": "a"}, {"text": "b"}]))
    target = tmp_path / "written-by-the-server.jsonl"
    with pytest.raises(TwinkleClientError, match="save_as cannot be called"):
        ds.save_as(path=str(target))
    assert not target.exists()
    # pass-through keywords: cache files, worker processes
    with pytest.raises(TwinkleClientError, match=r"takes no argument\(s\) \['cache_dir'\]"):
        Dataset(dataset_meta=DatasetMeta(data=[{"text": "a"}]), cache_dir=str(tmp_path))
    with pytest.raises(TwinkleClientError, match=r"\['num_proc'\]"):
        ds.map("AlpacaProcessor", num_proc=4)
    with pytest.raises(TwinkleClientError, match="packing_num_proc is not accepted"):
        PackingDataset(dataset_meta=DatasetMeta(data=[{"text": "a"}]), packing_num_proc=8)
    # a template loads the tokenizer of a served model only, not a path of the caller's choosing
    with pytest.raises(TwinkleClientError, match="must be a model served here"):
        ds.set_template("Template", model_id=str(tiny_model_dir))
    # functions cannot be sent; preprocessors go by registered name
    with pytest.raises(TwinkleClientError, match=r"unknown preprocessor 'os\.system'"):
        ds.map("os.system")


def test_objects_belong_to_their_tenant_and_are_limited(client, server_url):
    from twinkle.dataset import DatasetMeta
    from twinkle_client import TwinkleClientError
    from twinkle_client.dataset import Dataset
    from twinkle_client.processor import InputProcessor

    ds = Dataset(dataset_meta=DatasetMeta(data=[{"text": "alice's row"}]))
    assert ds[0] == {"text": "alice's row"}
    mallory = Tenant(server_url, new_token()).start()
    stolen = mallory.raw("POST", "processor/twinkle/call",
                         {"processor_id": ds.processor_id, "function": "__getitem__", "index": 0})
    assert stolen.status_code == 404 and "alice" not in stolen.text
    # nor can another tenant hand alice's dataset to its own dataloader
    borrowed = mallory.raw("POST", "processor/twinkle/create", {"processor_type": "dataloader",
                                                                "class_type": "DataLoader",
                                                                "dataset": ds.processor_id, "batch_size": 1})
    assert borrowed.status_code == 404
    mallory.stop()

    made = [InputProcessor() for _ in range(19)]  # the dataset above is the 20th
    with pytest.raises(TwinkleClientError, match="Processor limit exceeded: 20/20") as err:
        InputProcessor()
    assert err.value.status == 429 and len(made) == 19
    with pytest.raises(TwinkleClientError, match="unknown dataset class 'Popen'"):
        from twinkle_client.processor import RemoteObject

        class Popen(RemoteObject):
            processor_type = "dataset"

        Popen(args=["true"])
