"""TorchSampler against the sampler contract (gpu.md §1): the vLLMSampler-shaped inputs and outputs, the
prompt's keys carried into ``new_input_feature`` (what rewards read), and log-probs equal to the trainer's so the
first GRPO ratio is exactly 1."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from twinkle.data_format import SamplingParams, get_user_data, set_user_data
from twinkle.errors import ConfigError, MissingDependencyError
from twinkle.loss import GRPOLoss
from twinkle.model import TransformersModel
from twinkle.reward import GSM8KAccuracyReward, GSM8KFormatReward
from twinkle.sampler import BaseSamplerEngine, Sampler, TorchSampler

PROMPT = [5, 17, 42, 99, 7, 3]


@pytest.fixture(scope="module")
def sampler(tiny_model_dir) -> TorchSampler:
    return TorchSampler(str(tiny_model_dir), engine_args={"gpu_memory_utilization": 0.8, "enable_lora": True})


# ---------------------------------------------------------------- SamplingParams


def test_sampling_params_translate_for_vllm_and_transformers(sampler):
    p = SamplingParams.from_dict({"max_new_tokens": 7, "temperature": 0.5, "top_k": 4, "stop": [3, 9],
                                  "unknown": 1, "num_samples": 2, "seed": 5, "logprobs": 1})
    assert p.max_tokens == 7 and p.stop == [3, 9]
    assert p.to_vllm_kwargs() == {"temperature": 0.5, "top_p": 1.0, "n": 2, "max_tokens": 7, "seed": 5, "top_k": 4,
                                  "stop_token_ids": [3, 9], "logprobs": 1}
    assert SamplingParams(stop="###", repetition_penalty=1.1).to_vllm_kwargs()["stop"] == ["###"]
    hf = SamplingParams(stop=[3]).to_transformers(sampler.tokenizer)
    assert hf["do_sample"] and hf["max_new_tokens"] == 2048 and 3 in hf["eos_token_id"]
    assert sampler.tokenizer.eos_token_id in hf["eos_token_id"]
    assert SamplingParams(temperature=0).to_transformers()["do_sample"] is False
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"twinkle-commons\[vllm\]"):
            p.to_vllm()


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": "hot"}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"prompt_logprobs": -1}, "prompt_logprobs"), ({"num_samples": 1.5}, "num_samples"),
    ({"max_tokens": 2.0}, "max_tokens"), ({"stop": ["a", 3]}, "stop"),
])
def test_sampling_params_reject_bad_values_as_value_errors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


# ---------------------------------------------------------------- interfaces


def test_torch_sampler_implements_the_sampler_interfaces(sampler):
    assert isinstance(sampler, Sampler)
    assert {"sample", "get_tokenizer"} <= BaseSamplerEngine.__abstractmethods__
    with pytest.raises(NotImplementedError, match="adapter_path"):
        sampler.add_adapter_to_sampler("x")
    for noop in ("reset_prefix_cache", "reset_mm_cache", "reset_encoder_cache", "sleep", "wake_up"):
        assert getattr(sampler, noop)() is None
    keys = sampler.get_state_keys()
    assert "model.embed_tokens.weight" in keys and not any(k.startswith("base_model.") for k in keys)


def test_stop_token_ids_num_samples_override_and_dict_params(sampler):
    greedy = sampler.sample({"input_ids": PROMPT}, {"max_tokens": 6, "temperature": 0})[0].sequences[0]
    assert len(greedy.tokens) >= 2
    stop_id = greedy.tokens[1]
    out = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=6, temperature=0, stop=[stop_id]),
                         num_samples=3, return_encoded=True)[0]
    assert len(out.sequences) == 3
    first = out.sequences[0]
    assert first.tokens == greedy.tokens[: greedy.tokens.index(stop_id) + 1] and first.stop_reason == "stop"


def test_without_a_seed_draws_differ_between_calls(sampler):
    params = SamplingParams(max_tokens=8, temperature=1.5)
    a = sampler.sample([{"input_ids": PROMPT}], params)[0].sequences[0].tokens
    b = sampler.sample([{"input_ids": PROMPT}], params)[0].sequences[0].tokens
    assert a != b  # one generator (seeded 42 + rank) advancing, as vLLM's engine seed


def test_new_input_feature_keeps_the_trajectory_and_appends_the_reply(sampler, chat):
    sampler.set_template("Template", max_length=128)
    row = set_user_data(chat("What is 2 + 3?"), "ground_truth", "5")
    seqs = sampler.sample([row], SamplingParams(max_tokens=6, num_samples=2, seed=1, logprobs=1))[0].sequences
    for seq in seqs:
        feature = seq.new_input_feature
        assert get_user_data(feature, "ground_truth") == "5"
        assert feature["messages"][:-1] == row["messages"]
        assert feature["messages"][-1] == {"role": "assistant", "content": seq.decoded}
        assert len(feature["input_ids"]) == len(feature["labels"]) and list(feature["input_ids"][-len(seq.tokens):]) \
            == seq.tokens
    assert row["messages"][-1]["role"] == "user"  # the input itself is untouched (deep copy)
    # the rewards score the appended reply: a reply is planted to show they read that message
    planted = dict(seqs[0].new_input_feature, messages=row["messages"] + [{"role": "assistant", "content": "#### 5"}])
    assert GSM8KAccuracyReward()([planted]) == [1.0] and GSM8KFormatReward()([planted]) == [1.0]
    assert GSM8KAccuracyReward()([s.new_input_feature for s in seqs]) == [0.0, 0.0]


def test_first_grpo_ratio_is_exactly_one(tiny_model_dir, chat):
    """At temperature 1 the sampler's log-prob of each sampled token is the trainer's logp on the same weights."""
    model = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    model.add_adapter_to_model("default", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    model.set_optimizer("AdamW", lr=2e-2)
    model.forward_backward(inputs=[chat("who are you?", "twinkle 42")])
    model.clip_grad_and_step()  # LoRA B is no longer zero: the adapter matters
    sampler = TorchSampler(str(tiny_model_dir))
    sampler.receive_weights(model)
    seqs = [s for r in sampler.sample([{"input_ids": PROMPT}, {"input_ids": PROMPT[:4]}],
                                      SamplingParams(max_tokens=8, num_samples=2, temperature=1.0, logprobs=1,
                                                     seed=0)) for s in r.sequences]
    inputs = [s.new_input_feature for s in seqs]
    old_logps = [[entry[0][1] for entry in s.logprobs] for s in seqs]
    out = model.forward_only(inputs=inputs)
    labels = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(f["labels"]) for f in inputs], batch_first=True,
                                             padding_value=-100)
    mask = labels != -100
    for row, old in enumerate(old_logps):
        new = out["logps"][row][mask[row]]
        ratio = torch.exp(new - torch.tensor(old))
        assert ratio.tolist() == pytest.approx([1.0] * len(old), abs=2e-5)
    # the GRPO loss at ratio 1 is the plain policy gradient: -mean(advantage) (per-sequence mean, then batch mean)
    advantages = [1.0, -0.5, 0.25, 2.0]
    loss = GRPOLoss(epsilon=0.2)({"labels": labels}, {"logps": out["logps"]}, old_logps=old_logps,
                                 advantages=advantages)["loss"]
    assert float(loss) == pytest.approx(-sum(advantages) / len(advantages), abs=1e-5)
    with pytest.raises(ConfigError):
        sampler.receive_weights(42)
