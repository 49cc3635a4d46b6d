import pytest
import torch

from twinkle.errors import ConfigError, DataError
from twinkle.processor import InputProcessor

ROWS = [
    {"input_ids": [1, 2, 3], "labels": [2, 3, -100], "completion_mask": [0, 1, 1], "length": 3, "messages": "x"},
    {"input_ids": [4, 5], "labels": [5, -100], "completion_mask": [1, 1], "length": 2, "messages": "y"},
]


def test_right_padding_values():
    batch = InputProcessor()(ROWS)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "position_ids", "completion_mask"}
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.long for v in batch.values())
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["labels"].tolist() == [[2, 3, -100], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, -1]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1], [1, 1, 0]]


def test_left_padding_values():
    batch = InputProcessor(padding_side="left")(ROWS)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [0, 4, 5]]
    assert batch["labels"].tolist()[1] == [-100, 5, -100]
    assert batch["attention_mask"].tolist()[1] == [0, 1, 1]
    assert batch["position_ids"].tolist()[1] == [-1, 0, 1]


def test_padding_free_packs_into_one_row_with_cu_seq_lens():
    batch = InputProcessor(padding_free=True)(ROWS)
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[2, 3, -100, 5, -100]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["cu_seq_lens_k"].dtype == torch.int32
    assert batch["max_length_q"] == 3 and batch["max_length_k"] == 3


def test_padding_free_finds_samples_inside_packed_rows():
    packed = {"input_ids": [1, 2, 3, 4, 5], "labels": [2, -100, 4, 5, -100], "position_ids": [0, 1, 0, 1, 2]}
    batch = InputProcessor(padding_free=True)([packed, ROWS[1]])
    assert batch["cu_seq_lens_q"].tolist() == [0, 2, 5, 7] and batch["max_length_q"] == 3


def test_collate_fn_returns_micro_batches():
    rows = ROWS * 3
    micro = InputProcessor().collate_fn(rows, micro_batch_size=2)
    assert len(micro) == 3 and all(m["input_ids"].shape[0] == 2 for m in micro)
    assert len(InputProcessor().collate_fn(rows)) == 1
    assert InputProcessor(framework="megatron")(ROWS)[0]["input_ids"].shape == (2, 3)


def test_bad_arguments_and_rows():
    with pytest.raises(ConfigError, match="padding_side"):
        InputProcessor(padding_side="middle")
    with pytest.raises(ConfigError, match="framework"):
        InputProcessor(framework="jax")
    with pytest.raises(DataError, match="encode"):
        InputProcessor()([{"messages": []}])
    with pytest.raises(DataError, match="different lengths"):
        InputProcessor()([{"input_ids": [1, 2], "labels": [1]}])


def test_padding_free_forward_matches_padded_forward(model_dir, template, chat):
    """Packed samples attend only within themselves: the tiny real model gives the same logits both ways."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = template.batch_encode([chat("Hi", "Hello!"), chat("Who are you?", "I am twinkle, built by the lab.")])
    padded = InputProcessor()(rows)
    packed = InputProcessor(padding_free=True)(rows)
    with torch.no_grad():
        a = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False).logits
        # transformers finds packed samples from position_ids when there is no attention mask and no cache
        b = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    n0, n1 = rows[0]["length"], rows[1]["length"]
    assert torch.allclose(a[0, :n0], b[0, :n0], atol=1e-4)
    assert torch.allclose(a[1, :n1], b[0, n0 : n0 + n1], atol=1e-4)
