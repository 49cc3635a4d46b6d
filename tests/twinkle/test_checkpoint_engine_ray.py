"""CheckpointEngineManager under Ray with CPU groups: a trainer group (dp=2, TransformersModel with LoRA) syncs into
a sampler group (two TorchSampler replicas, loaded from a *different* random model) over the gloo engine, in small
buckets (chunked tensors included). After every sync each sampler replica holds exactly the trainer's weights: the
base weights after the first sync, the LoRA weights after each later one (merge_and_sync=False), and the merged
weights with merge_and_sync=True."""

from __future__ import annotations

import os
import sys

import pytest
import torch

ray = pytest.importorskip("ray")

import twinkle  # noqa: E402
from twinkle import DeviceGroup, DeviceMesh, remote_class, remote_function  # noqa: E402
from twinkle.checkpoint_engine import CheckpointEngineManager  # noqa: E402
from twinkle.checkpoint_engine._names import strip_base_layer, strip_peft_prefix  # noqa: E402
from twinkle.infra import _state  # noqa: E402
from twinkle.infra.ray import shutdown_ray  # noqa: E402
from twinkle.model import TransformersModel  # noqa: E402
from twinkle.sampler import TorchSampler  # noqa: E402

pytestmark = pytest.mark.ray

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _plain(state: dict) -> dict:
    return {strip_base_layer(strip_peft_prefix(k)): v.detach().clone() for k, v in state.items() if "lora_" not in k}


@remote_class()
class InspectableSampler(TorchSampler):
    @remote_function(dispatch="all", collect="none")
    def weights(self, lora: bool = False):
        """This replica's base weights (names as in a plain model), or its synced LoRA weights."""
        if lora:
            from peft import get_peft_model_state_dict

            return {strip_peft_prefix(k): v.clone()
                    for k, v in get_peft_model_state_dict(self.model, adapter_name="twinkle_lora").items()}
        return _plain(self.model.state_dict())


@remote_class()
class InspectableModel(TransformersModel):
    @remote_function(dispatch="all", collect="first")
    def merged_weights(self):
        self.model.merge_adapter()
        try:
            return _plain(self.model.state_dict())
        finally:
            self.model.unmerge_adapter()

    @remote_function(dispatch="all", collect="first")
    def base_weights(self):
        return _plain(self.model.state_dict())


@pytest.fixture(scope="module")
def groups(tmp_path_factory, tiny_model_dir):
    from twinkle.assets._tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path_factory.mktemp("other-model"), seed=7)  # same shapes, other weights
    os.environ["TWINKLE_CKPT_BUCKET_BYTES"] = str(32 << 10)  # the embedding (124 KB) travels in chunks
    # 4 logical CPUs for 4 one-rank actors (the machine's 2 cores are shared; each actor is mostly idle)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    twinkle.initialize(mode="ray", groups=[DeviceGroup("model", 2, "cpu"), DeviceGroup("sampler", 2, "cpu")],
                       lazy_collect=True)
    mesh = DeviceMesh.from_sizes(world_size=2, dp_size=2, device_type="cpu")
    from peft import LoraConfig

    model = InspectableModel(model_id=str(tiny_model_dir), device_mesh=mesh, remote_group="model",
                             gradient_checkpointing=False)
    model.add_adapter_to_model("default", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    model.set_optimizer("AdamW", lr=2e-2)
    sampler = InspectableSampler(str(other), device_mesh=mesh, remote_group="sampler")
    yield model, sampler
    shutdown_ray()
    ray.shutdown()
    os.environ.pop("TWINKLE_CKPT_BUCKET_BYTES", None)
    _state.reset()


def _train_step(model, chat):
    rows = [chat("who are you?", "I am twinkle, 42."), chat("what can you do?", "Count: 1 2 3.")]
    model.forward_backward(inputs=rows)
    model.clip_grad_and_step()


def _assert_equal(expected: dict, got: dict, what: str):
    assert sorted(got) == sorted(expected), what
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), f"{what}: {name} differs"


def test_sampler_weights_equal_the_trainers_after_every_sync(groups, chat):
    model, sampler = groups
    before = sampler.weights()[0]
    base = model.base_weights()
    assert any(not torch.equal(before[k], base[k]) for k in base)  # the sampler starts on other weights

    ckpt = CheckpointEngineManager(model, sampler)
    assert ckpt.platform == "CPU"
    ckpt.sync_weights(merge_and_sync=False)  # first: the base weights
    for replica in sampler.weights():
        _assert_equal(base, replica, "base sync")

    previous = None
    for step in range(2):  # later: the LoRA weights, and the sampler samples with them
        _train_step(model, chat)
        ckpt.sync_weights(merge_and_sync=False)
        lora = {strip_peft_prefix(k): v.detach() for k, v in model.get_state_dict().items()}
        assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
        for replica in sampler.weights(lora=True):
            _assert_equal(lora, replica, f"LoRA sync {step}")
        if previous is not None:
            assert any(not torch.equal(previous[k], lora[k]) for k in lora)
        previous = lora
        for replica in sampler.weights():  # the base stays the trainer's
            _assert_equal(base, replica, "base after LoRA sync")

    merged_ckpt = CheckpointEngineManager(model, sampler)  # full weights: base first, then merged every call
    merged_ckpt.sync_weights(merge_and_sync=True)
    merged_ckpt.sync_weights(merge_and_sync=True)
    merged = model.merged_weights()
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    for replica in sampler.weights():
        _assert_equal(merged, replica, "merged sync")
    # after a base sync the synced adapter is no longer the default: sampling uses the merged base alone
    out = sampler.sample([{"input_ids": [5, 17, 42]}] * 2, {"max_tokens": 2, "seed": 0, "logprobs": 1})
    assert len(out) == 2 and all(len(r.sequences[0].tokens) >= 1 for r in out)
