"""Upstream's DPO data path: EmojiDPOProcessor -> Dataset.encode on positive/negative -> interleave_pairs, and the
tiny model trained with DPOLoss, SimPOLoss, CPOLoss and ORPOLoss on it."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from twinkle.dataloader import DataLoader, interleave_pairs
from twinkle.dataset import Dataset, DatasetMeta
from twinkle.loss import CPOLoss, DPOLoss, ORPOLoss, SimPOLoss
from twinkle.metric import DPOMetric
from twinkle.preprocessor import EmojiDPOProcessor


@pytest.fixture(scope="module")
def pairs_dataset(model_dir, tmp_path_factory):
    from twinkle.assets import preference_pairs_path

    path = preference_pairs_path(tmp_path_factory.mktemp("pairs"))
    ds = Dataset(dataset_meta=DatasetMeta(str(path), data_slice=range(8)))
    ds.set_template("Template", model_id=model_dir, max_length=128)
    ds.map(EmojiDPOProcessor())
    ds.encode(load_from_cache_file=True)  # upstream's scripts pass it; encode must accept it
    return ds


def test_encode_keeps_one_sample_per_side(pairs_dataset, template):
    row = pairs_dataset[0]
    assert set(row) == {"positive", "negative"}  # EmojiDPOProcessor returns only these; nothing filtered
    assert len(pairs_dataset) == 8
    for side in ("positive", "negative"):
        item = row[side]
        assert {"messages", "input_ids", "labels", "attention_mask", "position_ids", "length"} <= set(item)
        assert item["messages"][-1]["role"] == "assistant"
        expected = template.encode({"messages": item["messages"]})
        assert list(item["input_ids"]) == list(expected["input_ids"])
        assert list(item["labels"]) == list(expected["labels"])
    assert row["positive"]["messages"][-1]["content"].endswith("😊")
    assert "ChatGPT" in row["negative"]["messages"][-1]["content"]


def test_interleave_pairs_and_errors(pairs_dataset):
    rows = next(iter(DataLoader(pairs_dataset, batch_size=4)))
    batch = interleave_pairs(rows)
    assert len(batch) == 8 and all("messages" not in r for r in batch)
    assert [list(r["input_ids"]) for r in batch[0::2]] == [list(r["positive"]["input_ids"]) for r in rows]
    assert [list(r["input_ids"]) for r in batch[1::2]] == [list(r["negative"]["input_ids"]) for r in rows]
    with pytest.raises(KeyError, match="EmojiDPOProcessor"):
        interleave_pairs([{"input_ids": [1]}])


def test_split_truncation_is_refused_for_pairs(model_dir):
    from twinkle.errors import ConfigError

    ds = Dataset(dataset_meta=DatasetMeta(data=[{"prompt": "q", "answer_zh": "a", "answer_en": "b"}]))
    ds.set_template("Template", model_id=model_dir, max_length=4, truncation_strategy="split")
    ds.map(EmojiDPOProcessor())
    with pytest.raises(ConfigError, match="one-to-one pairing"):
        ds.encode()


@pytest.mark.parametrize(
    ("loss_cls", "kwargs"),
    [(DPOLoss, {"beta": 0.1}), (SimPOLoss, {"beta": 2.5, "gamma": 0.5}), (CPOLoss, {"beta": 0.1, "bc_coef": 1.0}),
     (ORPOLoss, {"lambda_orpo": 0.1})],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_preference_losses_train_the_tiny_model(pairs_dataset, model_dir, loss_cls, kwargs):
    from twinkle.model import TransformersModel

    batch = interleave_pairs(next(iter(DataLoader(pairs_dataset, batch_size=4))))
    torch.manual_seed(0)
    model = TransformersModel(model_id=model_dir)
    model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
    model.set_loss(loss_cls, **kwargs)
    model.add_metric(DPOMetric, is_training=True, beta=0.1)
    model.set_optimizer("AdamW", lr=5e-3)
    losses = []
    for _ in range(5):
        extra = {"ref_outputs": model.forward_only(inputs=batch, disable_lora=True)} if loss_cls is DPOLoss else {}
        losses.append(float(model.forward_backward(inputs=batch, **extra)["loss"]))
        model.clip_grad_and_step()
    assert losses[-1] < losses[0] * 0.97, losses
    metric = model.calculate_metric(is_training=True)
    assert "logps/chosen" in metric
    if loss_cls is DPOLoss:  # the reference reached the metric through forward_backward's keywords
        assert float(metric["rewards/margins"]) > 0 and metric["rewards/accuracies"].endswith("%")
