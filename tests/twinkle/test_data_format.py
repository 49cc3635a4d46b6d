import pytest

from twinkle.data_format import (
    InputFeature,
    Message,
    ModelOutput,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    Trajectory,
    get_user_data,
    set_user_data,
)


def test_typed_dict_fields():
    assert set(InputFeature.__annotations__) == {
        "input_ids", "attention_mask", "position_ids", "labels", "completion_mask", "length", "routed_experts",
    }
    assert set(Message.__annotations__) == {"role", "content", "tool_calls", "reasoning_content", "type",
                                            "tool_call_id"}
    assert set(Trajectory.__annotations__) == {"messages", "tools", "user_data", "images", "videos", "audios",
                                               "prompt"}
    assert set(ModelOutput.__annotations__) == {"logits", "loss", "logps", "num_tokens", "embeddings",
                                                "routed_experts"}


def test_upstream_user_data_helpers():
    from twinkle.data_format import pack_value, user_data_get

    assert pack_value({"a": "é"}) == '{"a": "é"}' and pack_value(object).startswith('"<class')
    items = [("gt", '"42"'), ("raw", "not json"), ("obj", {"k": 1}), ("gt", '"shadowed"')]
    assert user_data_get(items, "gt") == "42"  # the first pair wins, JSON-decoded
    assert user_data_get(items, "raw") == "not json" and user_data_get(items, "obj") == {"k": 1}
    assert user_data_get(items, "missing", 7) == 7 and user_data_get("not a list", "gt", 0) == 0


def test_user_data_round_trips_any_json_value():
    traj = Trajectory(messages=[])
    set_user_data(traj, "ground_truth", "42")
    set_user_data(traj, "meta", {"k": [1, 2]})
    set_user_data(traj, "ground_truth", "43")
    assert get_user_data(traj, "ground_truth") == "43" and get_user_data(traj, "meta") == {"k": [1, 2]}
    assert get_user_data(traj, "missing", 0) == 0
    assert all(isinstance(v, str) for _, v in traj["user_data"])


def test_sampling_params_defaults():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.num_samples) == (
        None, 1.0, -1, 1.0, 1.0, 1,
    )
    assert SamplingParams(stop="###").stop == ["###"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
    ],
)
def test_sampling_params_reject_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_sampling_params_list_every_problem_at_once():
    with pytest.raises(ValueError) as err:
        SamplingParams(temperature=-1, top_p=2)
    assert "temperature" in str(err.value) and "top_p" in str(err.value)


def test_sample_response_shapes():
    seq = SampledSequence(stop_reason="stop", tokens=[5, 6], logprobs=[[(5, -0.1)], [(6, -0.2)]], decoded="hi")
    response = SampleResponse(sequences=[seq])
    assert response.sequences[0].logprobs[1][0][1] == -0.2 and response.prompt_logprobs is None
    assert SampledSequence().tokens == [] and SampleResponse().sequences == []
