"""TorchSampler on the tiny real model: decoding matches the model's own logits, and samples train."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from twinkle.data_format import SampleResponse, SamplingParams
from twinkle.errors import AdapterError, ConfigError, DataError, TemplateError
from twinkle.model import TransformersModel
from twinkle.sampler import TorchSampler

PROMPT = [5, 17, 42, 99, 7, 3]


@pytest.fixture(scope="module")
def sampler(tiny_model_dir) -> TorchSampler:
    return TorchSampler(str(tiny_model_dir))


def raw_logits(s: TorchSampler, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return s.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()


def test_greedy_equals_a_hand_rolled_argmax_loop(sampler):
    out = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=8, temperature=0, logprobs=0))
    assert len(out) == 1 and isinstance(out[0], SampleResponse)
    seq = out[0].sequences[0]
    ids, expected = list(PROMPT), []
    for _ in range(len(seq.tokens)):
        token = int(torch.argmax(raw_logits(sampler, ids)))
        expected.append(token)
        ids.append(token)
        if token in sampler.eos_ids:
            break
    assert seq.tokens == expected and len(expected) > 0
    # greedy reports log-probs at temperature 1
    lp = torch.log_softmax(raw_logits(sampler, PROMPT), -1)[expected[0]].item()
    assert seq.logprobs[0][0] == (expected[0], pytest.approx(lp, abs=1e-4))


def test_sampled_logprob_is_log_softmax_of_the_logits_with_temperature(sampler):
    params = SamplingParams(max_tokens=6, temperature=0.7, logprobs=3, seed=1)
    seq = sampler.sample([{"input_ids": PROMPT}], params)[0].sequences[0]
    ids = list(PROMPT)
    for token, entry in zip(seq.tokens, seq.logprobs, strict=True):
        logp = torch.log_softmax(raw_logits(sampler, ids) / 0.7, -1)
        assert entry[0][0] == token
        assert entry[0][1] == pytest.approx(logp[token].item(), abs=1e-4)
        top = torch.topk(logp, 3)
        assert [t for t, _ in entry[1:]] == top.indices.tolist()
        assert [v for _, v in entry[1:]] == pytest.approx(top.values.tolist(), abs=1e-4)
        ids.append(token)


def test_top_k_logprobs_are_renormalised_over_the_kept_tokens(sampler):
    seq = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=1, top_k=2, logprobs=5, seed=0))[0]
    entry = seq.sequences[0].logprobs[0]
    logits = raw_logits(sampler, PROMPT)
    kept = torch.topk(logits, 2).indices.tolist()
    assert entry[0][0] in kept and len(entry) == 3  # the sampled token, then only the 2 finite ones
    expected = torch.log_softmax(logits[kept], -1)
    assert entry[0][1] == pytest.approx(expected[kept.index(entry[0][0])].item(), abs=1e-4)


def test_seed_reproduces_and_num_samples(sampler):
    params = SamplingParams(max_tokens=10, num_samples=4, seed=123, temperature=1.5)
    a = sampler.sample([{"input_ids": PROMPT}, {"input_ids": PROMPT[:3]}], params)
    b = sampler.sample([{"input_ids": PROMPT}, {"input_ids": PROMPT[:3]}], params)
    assert len(a) == 2 and all(len(r.sequences) == 4 for r in a)
    assert [[s.tokens for s in r.sequences] for r in a] == [[s.tokens for s in r.sequences] for r in b]
    assert len({tuple(s.tokens) for s in a[0].sequences}) > 1  # samples differ from each other
    c = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=10, num_samples=4, seed=124,
                                                                temperature=1.5))
    assert [s.tokens for s in c[0].sequences] != [s.tokens for s in a[0].sequences]


def test_max_tokens_and_stop_reasons(sampler):
    seqs = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=3, num_samples=3, seed=0,
                                                                  temperature=1.0))[0].sequences
    for s in seqs:
        assert (len(s.tokens) == 3 and s.stop_reason == "length") or (
            s.stop_reason == "stop" and s.tokens[-1] in sampler.eos_ids
        )
    greedy = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=12, temperature=0))[0].sequences[0]
    text = sampler.tokenizer.decode(greedy.tokens, skip_special_tokens=True)
    assert len(text) >= 4, text
    stop = text[2:4]
    stopped = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=12, temperature=0, stop=stop))
    seq = stopped[0].sequences[0]
    assert seq.stop_reason == "stop" and stop not in seq.decoded and text.startswith(seq.decoded)
    assert len(seq.tokens) <= len(greedy.tokens) and seq.tokens == greedy.tokens[: len(seq.tokens)]


def test_max_tokens_zero_gives_prompt_logprobs(sampler):
    # gpu.md §1.5: num_samples empty sequences whose feature is the prompt; a float per prompt token (None first)
    # and the top-k lists, sorted descending
    out = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=0, logprobs=3, num_samples=2))[0]
    assert [s.tokens for s in out.sequences] == [[], []] and out.prompt_token_ids == PROMPT
    assert list(out.sequences[0].new_input_feature["input_ids"]) == PROMPT
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(PROMPT)
    logp = torch.log_softmax(raw_logits(sampler, PROMPT[:3]), -1)
    assert out.prompt_logprobs[3] == pytest.approx(logp[PROMPT[3]].item(), abs=1e-4)
    top = torch.topk(logp, 3)
    assert [t for t, _ in out.topk_prompt_logprobs[3]] == top.indices.tolist()
    assert [v for _, v in out.topk_prompt_logprobs[3]] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_prompt_logprobs_come_with_the_completions(sampler):
    out = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=2, prompt_logprobs=0, seed=0))[0]
    assert len(out.sequences) == 1 and len(out.sequences[0].tokens) >= 1
    assert out.topk_prompt_logprobs[1:] == [[]] * (len(PROMPT) - 1)
    logp = torch.log_softmax(raw_logits(sampler, PROMPT[:2]), -1)
    assert out.prompt_logprobs[2] == pytest.approx(logp[PROMPT[2]].item(), abs=1e-4)


def test_new_input_feature_masks_the_prompt_and_trains(sampler, tiny_model_dir):
    seqs = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=5, num_samples=2, seed=3,
                                                                  logprobs=0))[0].sequences
    for s in seqs:
        f = s.new_input_feature
        assert list(f["input_ids"]) == PROMPT + s.tokens
        # rolled labels (as the template makes them): the prompt is masked, its last position predicts token 1
        assert list(f["labels"]) == [-100] * (len(PROMPT) - 1) + s.tokens + [-100]
        assert list(f["completion_mask"]) == [0] * len(PROMPT) + [1] * len(s.tokens)
    model = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    out = model.forward_only(inputs=[s.new_input_feature for s in seqs])
    # the trainer's logps on the completion are the sampler's logprobs (same weights, temperature 1)
    for row, s in enumerate(seqs):
        got = out["logps"][row, len(PROMPT) - 1: len(PROMPT) - 1 + len(s.tokens)]
        assert got.tolist() == pytest.approx([e[0][1] for e in s.logprobs], abs=1e-4)
    model.set_optimizer("AdamW", lr=1e-3)
    result = model.forward_backward(inputs=[s.new_input_feature for s in seqs])
    assert torch.isfinite(torch.as_tensor(result["loss"])).all()
    model.clip_grad_and_step()


def test_trajectory_input_with_a_template(sampler, tiny_model_dir, chat):
    fresh = TorchSampler(str(tiny_model_dir))
    chat = chat("hello there")
    with pytest.raises(TemplateError, match="set_template"):
        fresh.sample([chat], SamplingParams(max_tokens=2))
    fresh.set_template("Template", max_length=128)
    prompt = fresh.template.encode(chat, add_generation_prompt=True)["input_ids"]
    params = SamplingParams(max_tokens=4, temperature=0)
    via_chat = fresh.sample([chat], params)[0].sequences[0]
    via_ids = fresh.sample([{"input_ids": prompt}], params)[0].sequences[0]
    assert via_chat.tokens == via_ids.tokens
    assert list(via_chat.new_input_feature["input_ids"][: len(prompt)]) == list(prompt)


def test_invalid_inputs_say_what_to_do(sampler):
    with pytest.raises(DataError, match="empty prompt"):
        sampler.sample([{"input_ids": []}], SamplingParams(max_tokens=2))
    with pytest.raises(DataError, match="neither an InputFeature"):
        sampler.sample([{"text": "hi"}], SamplingParams(max_tokens=2))
    with pytest.raises(AdapterError, match="load_adapter"):
        sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=2), adapter_name="nope")


def test_adapter_from_model_save_matches_the_model(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    model = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
    model.set_optimizer("AdamW", lr=5e-2)
    batch = [{"input_ids": [*PROMPT, 11, 12, 13, 14], "labels": [-100] * len(PROMPT) + [11, 12, 13, 14]}]
    for _ in range(5):
        model.forward_backward(inputs=batch)
        model.clip_grad_and_step()
    path = model.save("step", output_dir=str(tmp_path))

    s = TorchSampler(str(tiny_model_dir))
    params = SamplingParams(max_tokens=6, temperature=0, logprobs=0)
    base = s.sample([{"input_ids": PROMPT}], params)[0].sequences[0]
    tuned = s.sample([{"input_ids": PROMPT}], params, adapter_path=path)[0].sequences[0]
    assert tuned.tokens != base.tokens or tuned.logprobs != base.logprobs
    out = model.forward_only(inputs=[tuned.new_input_feature])
    got = out["logps"][0, len(PROMPT) - 1: len(PROMPT) - 1 + len(tuned.tokens)]
    assert got.tolist() == pytest.approx([e[0][1] for e in tuned.logprobs], abs=1e-4)

    # in-process sync: train one more step, then receive_weights(model) follows it
    model.forward_backward(inputs=batch)
    model.clip_grad_and_step()
    s.receive_weights(model)
    synced = s.sample([{"input_ids": PROMPT}], params)[0].sequences[0]
    out = model.forward_only(inputs=[synced.new_input_feature])
    got = out["logps"][0, len(PROMPT) - 1: len(PROMPT) - 1 + len(synced.tokens)]
    assert got.tolist() == pytest.approx([e[0][1] for e in synced.logprobs], abs=1e-4)
    assert synced.logprobs != tuned.logprobs


def test_receive_weights_of_a_full_finetuned_model(tiny_model_dir):
    torch.manual_seed(0)
    model = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    model.set_optimizer("AdamW", lr=5e-2)
    batch = [{"input_ids": [*PROMPT, 11, 12], "labels": [-100] * (len(PROMPT) - 1) + [11, 12, -100]}]
    model.forward_backward(inputs=batch)
    model.clip_grad_and_step()
    s = TorchSampler(str(tiny_model_dir))
    params = SamplingParams(max_tokens=4, temperature=0, logprobs=0)
    before = s.sample([{"input_ids": PROMPT}], params)[0].sequences[0]
    s.receive_weights(model)
    after = s.sample([{"input_ids": PROMPT}], params)[0].sequences[0]
    assert after.logprobs != before.logprobs
    got = model.forward_only(inputs=[after.new_input_feature])["logps"][0, len(PROMPT) - 1: len(PROMPT) - 1 + 4]
    assert got.tolist() == pytest.approx([e[0][1] for e in after.logprobs[:4]], abs=1e-4)
    with pytest.raises(ConfigError, match="TransformersModel or a state dict"):
        s.receive_weights(42)


def test_top_p_and_repetition_penalty_shape_the_distribution(sampler):
    logits = raw_logits(sampler, PROMPT)
    # a tiny top_p keeps only the most likely token: sampling becomes greedy, with log-prob 0
    seq = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=1, top_p=1e-6, logprobs=0, seed=5))
    assert seq[0].sequences[0].logprobs[0] == [(int(torch.argmax(logits)), pytest.approx(0.0, abs=1e-6))]
    # repetition_penalty divides positive / multiplies negative logits of tokens already in the prompt
    penalised = logits.clone()
    for t in set(PROMPT):
        penalised[t] = penalised[t] / 2.0 if penalised[t] > 0 else penalised[t] * 2.0
    expected = torch.log_softmax(penalised, -1)
    entry = sampler.sample([{"input_ids": PROMPT}], SamplingParams(max_tokens=1, repetition_penalty=2.0,
                                                                   logprobs=0, seed=5))[0].sequences[0].logprobs[0]
    assert entry[0][1] == pytest.approx(expected[entry[0][0]].item(), abs=1e-4)
    assert not torch.allclose(expected, torch.log_softmax(logits, -1))
