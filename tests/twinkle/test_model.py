"""TransformersModel on the tiny real Qwen2 model, with hand-built (already collated) batches."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig

from twinkle.errors import (
    AdapterError,
    CheckpointError,
    ModelNotFoundError,
    OptimizerNotSetError,
    UnknownComponentError,
    UnsupportedParallelismError,
)
from twinkle.model import TransformersModel
from twinkle.utils.device_mesh import DeviceMesh


def make_batch(seed: int = 0, rows: int = 4, seq: int = 12, vocab: int = 200) -> dict[str, torch.Tensor]:
    """A collated batch the way the template + processor make it: labels rolled left, prompt masked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, seq), generator=g)
    labels = ids.roll(-1, dims=1)
    labels[:, :4] = -100
    labels[:, -1] = -100
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": torch.arange(seq).expand(rows, seq).clone(),
        "labels": labels,
    }


def lora(**kw) -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", **kw)


@pytest.fixture()
def model(tiny_model_dir) -> TransformersModel:
    torch.manual_seed(0)
    return TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)


def lora_params(m: TransformersModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.model.named_parameters() if "lora_" in k}


def test_forward_computes_logps_of_labels(model):
    batch = make_batch()
    out = model.forward(inputs=batch, return_logits=True)
    logp_all = torch.log_softmax(out["logits"].float(), -1)
    labels = batch["labels"]
    expected = logp_all.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
    assert torch.allclose(out["logps"], expected, atol=1e-5)
    assert "logits" not in model.forward(inputs=batch)  # dropped unless asked for


def test_cpu_bf16_falls_back_to_float32_with_one_info_line(tiny_model_dir, caplog):
    # the 'twinkle' logger does not propagate (upstream's get_logger); pytest attaches caplog to it directly
    with caplog.at_level("INFO", logger="twinkle"):
        m = TransformersModel(model_id=str(tiny_model_dir), mixed_precision="bf16")
    assert m.autocast_dtype is None
    assert next(m.model.parameters()).dtype == torch.float32
    assert [r.message for r in caplog.records if "mixed_precision" in r.message] == [
        "mixed_precision='bf16' on the CPU: training in float32"
    ]


def test_lora_trains_and_saved_adapter_reloads_with_identical_logits(model, tiny_model_dir, tmp_path):
    model.add_adapter_to_model("default", lora(), gradient_accumulation_steps=1)
    model.set_optimizer("AdamW", lr=5e-3)
    batch = make_batch()
    losses = []
    for _ in range(12):
        losses.append(model.forward_backward(inputs=batch)["loss"])
        model.clip_grad_and_step()
    assert losses[-1] < losses[0] * 0.95
    path = model.save("ckpt", output_dir=str(tmp_path))
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp folder was renamed away
    from safetensors.torch import load_file

    keys = list(load_file(f"{path}/adapter_model.safetensors"))
    assert keys and all(".default." not in k for k in keys)

    fresh = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    fresh.add_adapter_to_model("default", path)
    a = model.forward_only(inputs=batch, return_logits=True)["logits"]
    b = fresh.forward_only(inputs=batch, return_logits=True)["logits"]
    assert torch.equal(a, b)


def test_forward_only_disable_lora_gives_the_base_model(model, tiny_model_dir):
    batch = make_batch(3)
    base = model.forward_only(inputs=batch, return_logits=True)["logits"]
    model.add_adapter_to_model("default", lora(init_lora_weights=False))
    with_lora = model.forward_only(inputs=batch, return_logits=True)["logits"]
    without = model.forward_only(inputs=batch, return_logits=True, disable_lora=True)["logits"]
    assert not torch.allclose(with_lora, base)
    assert torch.allclose(without, base, atol=1e-6)


def test_full_finetuning_saves_and_reloads_the_whole_model(model, tiny_model_dir, tmp_path):
    model.set_optimizer("AdamW", lr=1e-3)
    batch = make_batch(1)
    for _ in range(3):
        model.forward_backward(inputs=batch)
        model.clip_grad_and_step()
    path = model.save(output_dir=str(tmp_path))
    assert path.endswith("checkpoint-step-3")
    assert (tmp_path / "checkpoint-step-3" / "config.json").exists()
    fresh = TransformersModel(model_id=path, gradient_checkpointing=False)
    a = model.forward_only(inputs=batch, return_logits=True)["logits"]
    b = fresh.forward_only(inputs=batch, return_logits=True)["logits"]
    assert torch.allclose(a, b, atol=1e-6)


def test_one_optimizer_step_after_every_gas_micro_batches(model):
    model.add_adapter_to_model("default", lora(), gradient_accumulation_steps=3)
    model.set_optimizer("SGD", lr=0.5)
    steps = []
    before = lora_params(model)
    for i in range(1, 7):
        model.forward_backward(inputs=make_batch(i))
        model.clip_grad_and_step()
        after = lora_params(model)
        steps.append(any(not torch.equal(before[k], after[k]) for k in before))
        before = after
    assert steps == [False, False, True, False, False, True]
    assert model.calculate_metric(True)["iters"] == "2"


def test_accumulated_sum_loss_equals_one_big_batch(tiny_model_dir):
    """gas=2 over two halves gives the update of gas=1 over the whole batch (global-token normalisation)."""
    batch = make_batch(5, rows=4)
    batch["labels"][0, 4:9] = -100  # uneven token counts between the halves
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    results = []
    for gas, pieces in ((1, [batch]), (2, halves)):
        torch.manual_seed(0)
        m = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
        m.add_adapter_to_model("default", lora(), gradient_accumulation_steps=gas)
        m.set_optimizer("SGD", lr=1.0, weight_decay=0.0)
        for piece in pieces:
            m.forward_backward(inputs=piece)
            m.clip_grad_and_step(max_grad_norm=1e9)
        results.append((lora_params(m), float(m.calculate_metric(True)["loss"])))
    (p1, l1), (p2, l2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    for k in p1:
        assert torch.allclose(p1[k], p2[k], atol=1e-6), k


def test_optimizer_groups_put_bias_and_norm_weights_without_decay(model):
    model.set_optimizer("AdamW", lr=1e-4, weight_decay=0.1)
    names = {id(p): n for n, p in model.model.named_parameters()}
    decay, no_decay = model.optimizer_groups[""].optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    assert no_decay_names and all(n.endswith("bias") or "norm" in n for n in no_decay_names)
    assert not any(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in decay["params"])


def test_metrics_and_the_platform_metrics_file(model, tmp_path, monkeypatch):
    sink = tmp_path / "m" / "metrics.jsonl"
    monkeypatch.setenv("TWINKLE_METRICS_FILE", str(sink))
    model.add_adapter_to_model("default", lora(), gradient_accumulation_steps=2)
    model.set_optimizer("AdamW", lr=1e-3)
    model.set_lr_scheduler("LinearWarmupScheduler", num_warmup_steps=0, num_training_steps=10)
    for i in range(4):
        model.forward_backward(inputs=make_batch(i))
        model.clip_grad_and_step()
    values = model.calculate_metric(is_training=True)
    assert {"loss", "grad_norm", "accuracy", "lr", "iters", "speed"} <= set(values)
    assert all(isinstance(v, str) for v in values.values())
    assert values["iters"] == "2" and float(values["lr"]) == pytest.approx(1e-3 * 9 / 10)
    model.forward_only(inputs=make_batch(9))
    model.calculate_loss()
    eval_values = model.calculate_metric(is_training=False)
    assert "loss" in eval_values and "lr" not in eval_values
    records = [json.loads(line) for line in sink.read_text().splitlines()]
    assert len(records) == 2
    assert records[0]["step"] == 2 and isinstance(records[0]["ts"], float)
    assert records[0]["metrics"]["loss"] == pytest.approx(float(values["loss"]))
    assert "eval/loss" in records[1]["metrics"]


def test_save_defaults_to_twinkle_output_dir_and_keeps_optimizer_state(model, tmp_path, monkeypatch):
    monkeypatch.setenv("TWINKLE_OUTPUT_DIR", str(tmp_path / "out"))
    model.add_adapter_to_model("default", lora(), gradient_accumulation_steps=2)
    model.set_optimizer("AdamW", lr=1e-3)
    model.set_lr_scheduler("CosineWarmupScheduler", num_warmup_steps=1, num_training_steps=10)
    for i in range(4):
        model.forward_backward(inputs=make_batch(i))
        model.clip_grad_and_step()
    path = model.save(save_optimizer=True)
    assert path == str(tmp_path / "out" / "checkpoint-step-4")
    names = {p.name for p in (tmp_path / "out" / "checkpoint-step-4").iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pt"} <= names
    state = json.loads((tmp_path / "out" / "checkpoint-step-4" / "trainer_state.json").read_text())
    assert state == {"cur_step": 4, "gradient_accumulation_steps": 2, "consumed_train_samples": 16,
                     "adapter_name": "default"}
    assert model.save(interval=3) is None  # 2 optimizer steps: not a multiple of 3


def test_resume_only_model_loads_the_weights_and_leaves_optimizer_and_counters_fresh(model, tiny_model_dir, tmp_path):
    model.add_adapter_to_model("default", lora(), gradient_accumulation_steps=1)
    model.set_optimizer("AdamW", lr=1e-2)
    for i in range(3):
        model.forward_backward(inputs=make_batch(i))
        model.clip_grad_and_step()
    path = model.save("ckpt", output_dir=str(tmp_path), save_optimizer=True)
    trained = lora_params(model)

    torch.manual_seed(1)
    fresh = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    fresh.add_adapter_to_model("default", lora(), gradient_accumulation_steps=1)
    fresh.set_optimizer("AdamW", lr=1e-2)
    saved = fresh.resume_from_checkpoint(path, resume_only_model=True)
    assert saved == {"cur_step": 3, "consumed_train_samples": 12, "gradient_accumulation_steps": 1}
    assert all(torch.equal(trained[k], v) for k, v in lora_params(fresh).items())
    group = fresh._group(None)
    assert group.cur_step == 0 and not group.optimizer.state  # nothing of the saved optimizer came back

    again = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    again.add_adapter_to_model("default", lora(), gradient_accumulation_steps=1)
    again.set_optimizer("AdamW", lr=1e-2)
    again.resume_from_checkpoint(path)
    assert again._group(None).cur_step == 3 and again._group(None).optimizer.state


def test_two_adapters_have_their_own_groups(model):
    model.add_adapter_to_model("a", lora(), gradient_accumulation_steps=1)
    model.add_adapter_to_model("b", lora(), gradient_accumulation_steps=2)
    model.set_optimizer("AdamW", lr=1e-3, adapter_name="a")
    with pytest.raises(OptimizerNotSetError):
        model.clip_grad_and_step(adapter_name="b")
    before = lora_params(model)
    model.forward_backward(inputs=make_batch(), adapter_name="a")
    model.clip_grad_and_step(adapter_name="a")
    after = lora_params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".a." in k for k in changed)
    with pytest.raises(AdapterError, match="no adapter named 'c'"):
        model.forward(inputs=make_batch(), adapter_name="c")


# ------------------------------------------------------------------ bad input


def test_lora_targeting_no_module_is_a_clear_error(model):
    with pytest.raises(AdapterError, match=r"targets no module.*no_such_proj"):
        model.add_adapter_to_model("default", LoraConfig(r=4, target_modules=["no_such_proj"]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.set_optimizer("Adamm"), "unknown optimizer 'Adamm'; known names: .*AdamW"),
        (lambda m: m.set_loss("CrossEntropy"), "unknown loss 'CrossEntropy'; known names: .*CrossEntropyLoss"),
    ],
)
def test_unknown_names_list_the_known_ones(model, call, match):
    with pytest.raises(UnknownComponentError, match=match):
        call(model)


def test_unknown_scheduler_lists_torch_and_ours(model):
    model.set_optimizer("AdamW")
    with pytest.raises(UnknownComponentError, match=r"unknown lr scheduler 'Cosine'.*CosineWarmupScheduler.*StepLR"):
        model.set_lr_scheduler("Cosine")


def test_step_before_set_optimizer_is_a_clear_error(model):
    model.forward_backward(inputs=make_batch())
    with pytest.raises(OptimizerNotSetError, match="set_optimizer"):
        model.clip_grad_and_step()
    with pytest.raises(OptimizerNotSetError, match="set_optimizer"):
        model.step()
    with pytest.raises(OptimizerNotSetError, match="set_optimizer"):
        model.set_lr_scheduler("CosineWarmupScheduler", num_warmup_steps=1, num_training_steps=2)


def test_save_into_an_unwritable_folder_is_a_clear_error(model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"cannot write a checkpoint into.*writable output_dir"):
        model.save("x", output_dir=str(blocker / "sub"))


def test_unresolvable_model_ids_are_named(tmp_path, monkeypatch):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelNotFoundError, match=f"cannot resolve model id '{missing}'.*does not exist"):
        TransformersModel(model_id=missing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="cannot resolve model id 'hf://nobody/no-such-model'"):
        TransformersModel(model_id="hf://nobody/no-such-model")
    monkeypatch.setenv("TWINKLE_FORBID_HF", "1")
    with pytest.raises(ModelNotFoundError, match="TWINKLE_FORBID_HF"):
        TransformersModel(model_id="hf://Qwen/Qwen2.5-0.5B")


def test_tensor_parallel_mesh_is_refused_with_the_reason(tiny_model_dir):
    mesh = DeviceMesh.from_sizes(tp_size=2, device_type="cpu")
    with pytest.raises(UnsupportedParallelismError, match="dp and fsdp meshes only; this mesh uses tp"):
        TransformersModel(model_id=str(tiny_model_dir), device_mesh=mesh)


# ------------------------------------------------------------------ inputs from the data pipeline


def _chat(answer: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "who are you?"},
            {"role": "assistant", "content": answer},
        ]
    }


def test_forward_takes_encoded_rows_trajectories_or_a_dict(model):
    from twinkle.processor import InputProcessor
    from twinkle.template import Template

    chats = [_chat("I am twinkle LLM."), _chat("I was made by the ModelScope community, a long answer.")]
    rows = Template(model.tokenizer_id).batch_encode(chats)  # what Dataset.encode + DataLoader yield
    from_rows = model.forward_only(inputs=rows)
    from_chats = model.forward_only(inputs=chats)  # Trajectories: encoded with the default Template
    from_dict = model.forward_only(inputs=InputProcessor()(rows))
    assert from_rows["logps"].shape[0] == 2
    assert torch.equal(from_rows["logps"], from_chats["logps"])
    assert torch.equal(from_rows["logps"], from_dict["logps"])
    labelled = InputProcessor()(rows)["labels"] != -100
    assert (from_rows["logps"][labelled] < 0).all() and (from_rows["logps"][~labelled] == 0).all()
    model.set_optimizer("AdamW", lr=1e-3)
    out = model.forward_backward(inputs=rows)
    assert out["loss"] > 0 and "logps" in out
