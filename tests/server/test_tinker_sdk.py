"""The stock Tinker SDK 0.16.1 from PyPI, unpatched (only base_url and a tml- key), against twinkle-server."""

from __future__ import annotations

import random

import pytest
from server_helpers import free_port, serve_in_thread

tinker = pytest.importorskip("tinker", minversion="0.16.1")
types = tinker.types

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tiny_model_dir, tmp_path_factory):
    from twinkle.server import ServerConfig
    from twinkle.server.settings import ServerSettings

    save = tmp_path_factory.mktemp("tinker-ckpt")
    config = ServerConfig.single_model(str(tiny_model_dir), name="tiny", max_loras=4, port=free_port())
    url, stop = serve_in_thread(config, ServerSettings(default_save_dir=str(save), cache_dir=str(save / ".c")))
    yield url
    stop()


@pytest.fixture()
def open_service():
    """``tinker.ServiceClient`` for a key; each is closed after the test, else its session heartbeat outlives the
    server and warns every 10 s until pytest exits."""
    made = []

    def make(url: str, key: str):
        made.append(tinker.ServiceClient(base_url=url, api_key=key))
        return made[-1]

    yield make
    for client in made:
        client.holder.close()


def sft_data(n: int = 2, length: int = 17) -> list:
    rnd = random.Random(0)
    data = []
    for _ in range(n):
        tokens = [rnd.randrange(3, 200) for _ in range(length)]
        weights = [0.0] * 4 + [1.0] * (length - 5)  # the prompt is not trained on
        data.append(types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                                loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights}))
    return data


def step(client, data, lr: float = 1e-2) -> float:
    fb = client.forward_backward(data, "cross_entropy")
    client.optim_step(types.AdamParams(learning_rate=lr)).result()  # sent before the first result is read
    out = fb.result()
    return out.metrics["loss:mean"], out


def test_sft_loop_with_the_stock_sdk_lowers_the_loss_and_checkpoints_round_trip(url, open_service):
    service = open_service(url, "tml-alice")
    assert [m.model_name for m in service.get_server_capabilities().supported_models] == ["tiny"]
    client = service.create_lora_training_client(base_model="tiny", rank=8)
    assert client.get_info().lora_rank == 8
    data = sft_data()
    losses = []
    for _ in range(8):
        loss, out = step(client, data)
        losses.append(loss)
    assert sum(losses[-2:]) < sum(losses[:2])
    # per-datum outputs: one log-prob per target token; elementwise loss = -logprob * weight
    first = out.loss_fn_outputs[0]
    assert len(first["logprobs"].data) == 16
    assert first["elementwise_loss"].data[:4] == [0.0] * 4 and first["elementwise_loss"].data[5] > 0

    saved = client.save_state("after8").result().path
    assert saved.startswith("tinker://") and saved.endswith("/weights/after8")
    next_loss, _ = step(client, data)
    step(client, data)
    client.load_state(saved).result()
    fb = client.forward_backward(data, "cross_entropy").result()
    assert fb.metrics["loss:mean"] == pytest.approx(next_loss, abs=1e-5)

    # the REST client lists the run's checkpoints, and only the caller's runs
    rest = service.create_rest_client()
    run_id = saved.split("/")[2]
    listed = rest.list_checkpoints(run_id).result().checkpoints
    assert [c.tinker_path for c in listed] == [saved] and listed[0].checkpoint_type == "training"
    assert run_id in [r.training_run_id for r in rest.list_training_runs().result().training_runs]
    assert rest.get_training_run(run_id).result().lora_rank == 8

    # sampling from the trained weights: greedy, so both samples agree; one log-prob per sampled token
    sampler = client.save_weights_and_get_sampling_client(name="for-sampling")
    prompt = types.ModelInput.from_ints([5, 6, 7, 8])
    result = sampler.sample(prompt=prompt, num_samples=2,
                            sampling_params=types.SamplingParams(max_tokens=4, temperature=0.0)).result()
    assert len(result.sequences) == 2 and result.sequences[0].tokens == result.sequences[1].tokens
    assert len(result.sequences[0].tokens) == len(result.sequences[0].logprobs) <= 4
    named = client.save_weights_for_sampler("named").result().path
    assert named.startswith("tinker://") and "/sampler_weights/named" in named
    again = service.create_sampling_client(model_path=named).sample(
        prompt=prompt, num_samples=1, sampling_params=types.SamplingParams(max_tokens=4, temperature=0.0)).result()
    assert again.sequences[0].tokens == result.sequences[0].tokens

    # another key cannot load alice's checkpoint, and an unknown loss is a clear error
    other = open_service(url, "tml-mallory").create_lora_training_client(
        base_model="tiny", rank=4)
    with pytest.raises(Exception, match="not found"):
        other.load_state(saved).result()
    mallory_rest = open_service(url, "tml-mallory").create_rest_client()
    assert run_id not in [r.training_run_id for r in mallory_rest.list_training_runs().result().training_runs]
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises its NotFoundError
        mallory_rest.list_checkpoints(run_id).result()
    with pytest.raises(Exception, match="not offered yet"):
        other.forward_backward(data, "ppo").result()

    # init_tinker_client: the same key without tml- is the same tenant, through either client
    import twinkle

    same = twinkle.init_tinker_client(base_url=url + "/api/v1", api_key="alice")
    client2 = same.create_lora_training_client(base_model="tiny", rank=8)
    client2.load_state(saved).result()
    fb2 = client2.forward_backward(data, "cross_entropy").result()
    same.holder.close()
    assert fb2.metrics["loss:mean"] == pytest.approx(next_loss, abs=1e-5)


def test_importance_sampling_moves_log_probs_in_the_direction_of_the_advantages(url, open_service):
    client = open_service(url, "tml-rl").create_lora_training_client(
        base_model="tiny", rank=8)
    rnd = random.Random(1)
    tokens = [[rnd.randrange(3, 200) for _ in range(13)] for _ in range(2)]

    def datum(toks, sign, old):
        n = len(toks) - 1
        inputs = {"target_tokens": toks[1:], "weights": [0.0] * 3 + [1.0] * (n - 3),
                  "advantages": [0.0] * 3 + [sign] * (n - 3)}
        if old is not None:  # the sampling policy's log-probs; without them the call is on-policy (ratio 1)
            inputs["logprobs"] = old
        return types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]), loss_fn_inputs=inputs)

    mean_lp = []
    old = [None, None]
    for _ in range(4):
        data = [datum(tokens[0], 1.0, old[0]), datum(tokens[1], -1.0, old[1])]
        out = client.forward_backward(data, "importance_sampling", {"epsilon": 0.2}).result()
        client.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        lps = [o["logprobs"].data for o in out.loss_fn_outputs]
        old = lps  # on-policy next round: the sampling policy is the current one
        mean_lp.append([sum(lp[3:]) / len(lp[3:]) for lp in lps])
        assert out.loss_fn_output_type == "ImportanceSamplingLossReturn"
    assert mean_lp[-1][0] > mean_lp[0][0]  # positive advantage: more likely
    assert mean_lp[-1][1] < mean_lp[0][1]  # negative advantage: less likely

