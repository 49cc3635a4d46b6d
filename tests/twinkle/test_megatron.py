"""The Megatron backend's CPU-testable logic: DeviceMesh -> Megatron parallel sizes, per-micro-batch slicing of loss
arguments, sequence padding, LoRA target expansion over Megatron module types, accepted optimizer names, and the
lazy import that names the fix. The model itself needs CUDA + megatron-core + TransformerEngine and has never run."""

from __future__ import annotations

import pytest
import torch

from twinkle import DeviceMesh
from twinkle.errors import ConfigError, MissingDependencyError
from twinkle.model.megatron._layout import (
    MEGATRON_ORDER,
    check_optimizer_name,
    check_scheduler_name,
    expand_target_modules,
    megatron_parallel_sizes,
    padded_seq_len,
    slice_loss_kwargs,
)


def test_mesh_maps_to_megatron_sizes_in_megatrons_rank_order():
    mesh = DeviceMesh.from_sizes(dp_size=2, tp_size=2, pp_size=2, vpp_size=2, ep_size=2, etp_size=1)
    sizes = megatron_parallel_sizes(mesh)
    assert sizes["tensor_model_parallel_size"] == 2 and sizes["pipeline_model_parallel_size"] == 2
    assert sizes["data_parallel_size"] == 2 and sizes["expert_model_parallel_size"] == 2
    assert sizes["virtual_pipeline_model_parallel_size"] == 2 and sizes["order"] == MEGATRON_ORDER
    # from_sizes puts tp fastest, then cp, dp, pp: Megatron's 'tp-cp-ep-dp-pp' order, so tp peers are neighbours
    assert mesh.get_dim_group_ranks("tp", rank=0) == [0, 1] and mesh.get_dim_group_ranks("pp", rank=0) == [0, 4]
    assert megatron_parallel_sizes(DeviceMesh.from_sizes(dp_size=1, vpp_size=1))["virtual_pipeline_model_parallel_size"] \
        is None
    assert not megatron_parallel_sizes(DeviceMesh.from_sizes(tp_size=2))["sequence_parallel"]
    assert megatron_parallel_sizes(DeviceMesh.from_sizes(tp_size=2), is_moe=True)["sequence_parallel"]


def test_meshes_megatron_cannot_use_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="from_sizes"):
        megatron_parallel_sizes(DeviceMesh.from_sizes(fsdp_size=2, dp_size=2, tp_size=2))
    with pytest.raises(ConfigError, match="ep_size=3"):
        megatron_parallel_sizes(DeviceMesh(mesh=[0, 1, 2, 3], mesh_dim_names=("dp",), ep_size=3))
    with pytest.raises(ConfigError, match="pp_size > 1"):
        megatron_parallel_sizes(DeviceMesh.from_sizes(dp_size=2, vpp_size=2))


def test_loss_arguments_are_sliced_per_micro_batch():
    kwargs = {"old_logps": [[0.1], [0.2, 0.3], [0.4], [0.5]], "advantages": torch.arange(4.0), "epsilon": 0.2,
              "ref": [1, 2]}
    part = slice_loss_kwargs(kwargs, 2, 2, 4)
    assert part["old_logps"] == [[0.4], [0.5]] and part["advantages"].tolist() == [2.0, 3.0]
    assert part["epsilon"] == 0.2 and part["ref"] == [1, 2]  # not per-sample: passed whole
    assert slice_loss_kwargs(kwargs, 0, 4, 4)["old_logps"] is kwargs["old_logps"]


def test_sequence_padding():
    assert padded_seq_len([5, 9, 7]) == 9
    assert padded_seq_len([5, 9], cp=2, variable_seq_lengths=False) == 12
    assert padded_seq_len([5, 9], cp=2, tp=3, sequence_parallel=True, variable_seq_lengths=False) == 12
    assert padded_seq_len([13], cp=2, tp=3, sequence_parallel=True, variable_seq_lengths=False) == 24


def test_lora_targets_expand_over_megatron_module_types():
    def kind(name):
        return type(name, (), {})()

    modules = [
        ("decoder.layers.0.self_attention.linear_qkv", kind("TELayerNormColumnParallelLinear")),
        ("decoder.layers.0.self_attention.linear_proj", kind("TERowParallelLinear")),
        ("decoder.layers.0.mlp.experts.linear_fc1", kind("TEGroupedLinear")),
        ("decoder.layers.0.mlp.router", kind("TopKRouter")),
        ("embedding.word_embeddings", kind("VocabParallelEmbedding")),
        ("output_layer", kind("TELinear")),
        ("decoder.final_layernorm", kind("TENorm")),
    ]
    assert expand_target_modules("all-linear", modules) == ["linear_fc1", "linear_proj", "linear_qkv"]
    assert expand_target_modules(["all-router", "all-embedding"], modules) == ["router", "word_embeddings"]
    assert expand_target_modules(["linear_qkv"], modules) == ["linear_qkv"]


def test_optimizer_and_scheduler_names():
    for name in (None, "", "default", "MegatronOptimizer", "Adam"):
        check_optimizer_name(name)
    for name in (None, "default", "OptimizerParamScheduler"):
        check_scheduler_name(name)
    with pytest.raises(NotImplementedError, match="'default'"):
        check_optimizer_name("AdamW")
    with pytest.raises(NotImplementedError, match="'default'"):
        check_scheduler_name("CosineAnnealingLR")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_building_without_megatron_names_the_extra():
    import twinkle.model as models

    assert "megatron" not in str(models.__dict__.get("MegatronModel"))  # lazy: nothing imported yet
    for cls in (models.MegatronModel, models.MultiLoraMegatronModel):
        with pytest.raises(MissingDependencyError, match=r"twinkle-commons\[megatron\]"):
            cls("some/model")
    with pytest.raises(MissingDependencyError, match=r"twinkle-commons\[megatron\]"):
        models.MegatronStrategy("dir", DeviceMesh.from_sizes(dp_size=1))


@pytest.mark.gpu
def test_megatron_model_trains_with_tp_and_lora_on_gpus(tiny_model_dir):  # pragma: no cover - never run (no GPU)
    pytest.importorskip("megatron.core")
    from peft import LoraConfig

    from twinkle.model import MegatronModel

    model = MegatronModel(str(tiny_model_dir), device_mesh=DeviceMesh.from_sizes(dp_size=1))
    model.add_adapter_to_model("default", LoraConfig(r=4, target_modules="all-linear"))
    model.set_optimizer("default", lr=1e-3)
    out = model.forward_backward(inputs=[{"messages": [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hello"}]}])
    model.clip_grad_and_step()
    assert torch.isfinite(torch.as_tensor(out["loss"])).all()
