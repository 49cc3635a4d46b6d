"""The Tinker flows of issue 16, driven by the newest tinker SDK (0.38) in its own interpreter.

Run by ``test_tinker_latest.py`` with the python of a venv that has only the SDK from PyPI (the shared venv pins
0.16.1). Usage: ``python tinker_latest_flows.py BASE_URL``. Stock SDK, nothing patched: only ``base_url`` and a
key. Prints one JSON object of what it observed on the last line; the test makes the assertions.
"""

from __future__ import annotations

import json
import random
import sys

import tinker
from tinker import types


def sft_data(n: int = 2, length: int = 17) -> list:
    rnd = random.Random(0)
    data = []
    for _ in range(n):
        tokens = [rnd.randrange(3, 200) for _ in range(length)]
        weights = [0.0] * 4 + [1.0] * (length - 5)  # the prompt is not trained on
        data.append(types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                                loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights}))
    return data


def rl_datum(tokens: list[int], sign: float, old: list[float] | None) -> types.Datum:
    n = len(tokens) - 1
    inputs = {"target_tokens": tokens[1:], "weights": [0.0] * 3 + [1.0] * (n - 3),
              "advantages": [0.0] * 3 + [sign] * (n - 3)}
    if old is not None:
        inputs["logprobs"] = old
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def main(url: str) -> None:
    seen: dict = {"sdk_version": tinker.__version__}
    service = tinker.ServiceClient(base_url=url, api_key="tml-latest-alice")
    seen["models"] = [m.model_name for m in service.get_server_capabilities().supported_models]
    client = service.create_lora_training_client(base_model="tiny", rank=8).result()  # 0.38: a future
    seen["lora_rank"] = client.get_info().lora_rank

    # SFT: cross_entropy + AdamParams, the optim step sent before the forward_backward result is read
    data = sft_data()
    seen["sft_losses"] = []
    for _ in range(8):
        fb = client.forward_backward(data, "cross_entropy")
        client.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        out = fb.result()
        seen["sft_losses"].append(out.metrics["loss:mean"])
    first = out.loss_fn_outputs[0]
    seen["logprobs_len"] = len(first["logprobs"].tolist())
    seen["elementwise_loss"] = first["elementwise_loss"].tolist()
    seen["forward_only_loss"] = client.forward(data, "cross_entropy").result().metrics["loss:mean"]

    # save_state / load_state: the loss after loading equals the loss right after saving
    saved = client.save_state("after8").result().path
    seen["saved"] = saved
    seen["loss_after_save"] = client.forward_backward(data, "cross_entropy").result().metrics["loss:mean"]
    client.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    client.forward_backward(data, "cross_entropy").result()
    client.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    client.load_state(saved).result()
    seen["loss_after_load"] = client.forward_backward(data, "cross_entropy").result().metrics["loss:mean"]

    # list checkpoints (the caller's own) through the REST client
    rest = service.create_rest_client()
    run_id = saved.split("/")[2]
    seen["checkpoints"] = [c.tinker_path for c in rest.list_checkpoints(run_id).result().checkpoints]
    seen["runs"] = [r.training_run_id for r in rest.list_training_runs().result().training_runs]

    # sample from the trained weights (greedy) and from a named sampler checkpoint
    sampler = client.save_weights_and_get_sampling_client(name="for-sampling")
    prompt = types.ModelInput.from_ints([5, 6, 7, 8])
    greedy = types.SamplingParams(max_tokens=4, temperature=0.0)
    result = sampler.sample(prompt=prompt, num_samples=2, sampling_params=greedy).result()
    seen["samples"] = [{"tokens": list(s.tokens), "logprobs": list(s.logprobs or []), "id": s.sequence_id,
                        "stop": s.stop_reason} for s in result.sequences]
    named = client.save_weights_for_sampler("named").result().path
    seen["named"] = named
    again = service.create_sampling_client(model_path=named).sample(prompt=prompt, num_samples=1,
                                                                     sampling_params=greedy).result()
    seen["named_sample"] = list(again.sequences[0].tokens)

    # importance_sampling: log-probs move in the direction of the advantages
    rl = service.create_lora_training_client(base_model="tiny", rank=8).result()
    rnd = random.Random(1)
    toks = [[rnd.randrange(3, 200) for _ in range(13)] for _ in range(2)]
    old: list = [None, None]
    seen["rl_mean_logprobs"] = []
    for _ in range(4):
        out = rl.forward_backward([rl_datum(toks[0], 1.0, old[0]), rl_datum(toks[1], -1.0, old[1])],
                                  "importance_sampling", {"epsilon": 0.2}).result()
        rl.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        old = [o["logprobs"].tolist() for o in out.loss_fn_outputs]
        seen["rl_mean_logprobs"].append([sum(lp[3:]) / len(lp[3:]) for lp in old])
        seen["rl_output_type"] = out.loss_fn_output_type

    # another key sees none of it
    other = tinker.ServiceClient(base_url=url, api_key="tml-latest-mallory")
    seen["other_runs"] = [r.training_run_id for r in other.create_rest_client().list_training_runs().result()
                          .training_runs]
    try:
        other.create_lora_training_client(base_model="tiny", rank=4).result().load_state(saved).result()
        seen["other_load"] = "loaded"
    except Exception as exc:  # noqa: BLE001 - the test reads the message
        seen["other_load"] = f"{type(exc).__name__}: {exc}"
    try:
        client.forward_backward(data, "ppo").result()
        seen["ppo"] = "accepted"
    except Exception as exc:  # noqa: BLE001
        seen["ppo"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1])
