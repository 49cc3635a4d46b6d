"""vLLMSampler's CPU-testable logic (engine arguments, stop reasons, log-prob conversion, the LoRA folder a sync
writes), and that without vLLM or a GPU it fails with an error naming the fix. The GPU path itself has never run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from twinkle.errors import MissingDependencyError
from twinkle.sampler import vllm_sampler as v


def test_engine_args_defaults_lora_rank_and_unknown_keys(caplog):
    args = v.build_engine_args("m", max_lora_rank=20, tensor_parallel_size=2, enable_lora=True)
    assert args["model"] == "m" and args["max_lora_rank"] == 32 and args["distributed_executor_backend"] == "mp"
    assert args["gpu_memory_utilization"] == 0.7 and args["logprobs_mode"] == "processed_logprobs"
    assert v.build_engine_args("m")["max_lora_rank"] == 32 and "distributed_executor_backend" not in v.build_engine_args("m")
    known = set(v.ENGINE_DEFAULTS) | {"model"}
    with caplog.at_level("WARNING"):
        kept = v.build_engine_args("m", known, enable_tower_connector_lora=True)
    assert "enable_tower_connector_lora" not in kept and "enable_tower_connector_lora" in caplog.text
    assert [v.round_lora_rank(r) for r in (1, 2, 8, 33, 300)] == [1, 8, 8, 64, 320]
    with pytest.raises(ValueError, match="largest"):
        v.round_lora_rank(1024)


def test_sampler_engine_args_take_tp_from_visible_devices_and_seed_from_rank():
    assert v.default_sampler_engine_args(None, 3, "0,1") == {"tensor_parallel_size": 2, "seed": 45}
    assert v.default_sampler_engine_args({"seed": 1, "tensor_parallel_size": 4}, 0, "0") == {
        "seed": 1, "tensor_parallel_size": 4}
    assert v.default_sampler_engine_args({}, 0, None)["tensor_parallel_size"] == 1


def test_stop_reasons_and_logprob_conversion():
    assert [v.map_stop_reason(r) for r in (None, "stop", "abort", "error", "length", "weird")] == [
        "length", "stop", "abort", "error", "length", "length"]
    def lp(x):  # vLLM's Logprob
        return SimpleNamespace(logprob=x)

    tokens = [5, 9]
    entries = [{5: lp(-0.5), 7: lp(-0.1), 3: lp(-2.0)}, {9: lp(-1.0), 1: lp(-0.2)}]
    assert v.convert_logprobs(tokens, entries, 1) == [[(5, -0.5)], [(9, -1.0)]]
    assert v.convert_logprobs(tokens, entries, 2) == [[(7, -0.1), (5, -0.5)], [(1, -0.2), (9, -1.0)]]
    assert v.convert_logprobs(tokens, entries, 0) == [[], []]
    assert v.convert_logprobs(tokens, entries, None) is None


def test_a_lora_sync_writes_a_peft_folder_that_peft_loads(tmp_path, tiny_model_dir):
    from peft import LoraConfig, PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    state = {k.removeprefix("base_model.model."): t for k, t in get_peft_model_state_dict(model).items()}
    config = model.peft_config["default"].to_dict()
    folder = v.write_lora_folder(str(tmp_path / "lora"), state, config)
    assert isinstance(PeftConfig.from_pretrained(folder), LoraConfig)
    other = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    from safetensors.torch import load_file

    set_peft_model_state_dict(other, load_file(f"{folder}/adapter_model.safetensors"))
    for (name, a), (_, b) in zip(get_peft_model_state_dict(model).items(), get_peft_model_state_dict(other).items(),
                                 strict=True):
        assert torch.equal(a, b), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_without_a_gpu_the_vllm_classes_say_what_to_install():
    from twinkle.sampler import VLLMEngine, vLLMSampler

    for build in (lambda: vLLMSampler("m"), lambda: VLLMEngine("m")):
        with pytest.raises(MissingDependencyError, match=r"pip install 'twinkle-commons\[vllm\]'"):
            build()


@pytest.mark.gpu
def test_vllm_sampler_samples_with_lora_on_a_gpu(tiny_model_dir):  # pragma: no cover - never run here (no GPU)
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from twinkle.data_format import SamplingParams
    from twinkle.sampler import vLLMSampler

    sampler = vLLMSampler(str(tiny_model_dir), engine_args={"enable_lora": True, "gpu_memory_utilization": 0.3})
    out = sampler.sample([{"input_ids": [5, 17, 42]}], SamplingParams(max_tokens=4, logprobs=1, seed=0))
    assert len(out[0].sequences[0].tokens) >= 1 and out[0].sequences[0].logprobs[0][0][0] == out[0].sequences[0].tokens[0]
