"""twinkle_client against a real twinkle-server child process (the short CLI form): the usage example trains with
the same per-step losses as local mode; a server restart gives a clear error and the last checkpoint loads."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from server_helpers import free_port, start_server_process, wait_healthy

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "self_cognition_client.py"
STEPS, SEED = 3, 11


def load_example(monkeypatch):
    monkeypatch.setenv("DATA_ROWS", "24")
    monkeypatch.setenv("BATCH_SIZE", "4")
    monkeypatch.setenv("SEED", str(SEED))
    spec = importlib.util.spec_from_file_location("self_cognition_client", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def local_losses(example, model_dir: str) -> list[float]:
    """The same loop in local mode: TransformersModel in this process, same seed and data."""
    from peft import LoraConfig

    import twinkle
    from twinkle.model import TransformersModel

    twinkle.initialize(mode="local")
    loader = example.dataloader()
    model = TransformersModel(model_id=model_dir)
    torch.manual_seed(SEED)
    model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"),
                               gradient_accumulation_steps=2)
    model.set_optimizer(optimizer_cls="AdamW", lr=example.LR)
    model.set_lr_scheduler(scheduler_cls="CosineWarmupScheduler", num_warmup_steps=5,
                           num_training_steps=len(loader))
    losses = []
    for step, batch in enumerate(loader):
        losses.append(float(model.forward_backward(inputs=batch)["loss"]))
        model.clip_grad_and_step()
        if (step + 1) // 2 >= STEPS and (step + 1) % 2 == 0:
            break
    return losses


@pytest.fixture()
def server(tiny_model_dir, tmp_path):
    port = free_port()
    procs = []

    def start():
        proc = start_server_process(str(tiny_model_dir), port, tmp_path / "storage", "--max-loras", "4")
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc=proc)
        return url, proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def test_client_example_matches_local_mode_and_survives_a_restart(server, tiny_model_dir, monkeypatch):
    from twinkle_client import TwinkleClientError, init_twinkle_client
    from twinkle_client.model import MultiLoraTransformersModel

    url, proc = server()
    example = load_example(monkeypatch)
    client = init_twinkle_client(url, api_key="alice-key", session_heartbeat_interval=1)
    remote, uri = example.train(max_steps=STEPS)
    local = local_losses(example, str(tiny_model_dir))
    assert len(remote) == len(local) == 2 * STEPS
    # sum-reduced losses: compare relatively (1e-6 of the sum is far below 1e-5 of the per-token mean)
    assert remote == pytest.approx(local, rel=1e-6)
    assert uri.startswith("twinkle://") and uri.endswith("/weights/last-checkpoint")
    assert client.list_checkpoints(uri.split("/")[2])[-1]["twinkle_path"] == uri
    probe = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, 6, 7, 8, 9, -100]}]
    model = MultiLoraTransformersModel("tiny")
    model.adapter_name = "default"
    before = model.forward_only(inputs=probe)["logps"]

    proc.terminate()
    proc.wait(timeout=30)
    url, proc = server()  # same port, same storage
    with pytest.raises(TwinkleClientError) as err:
        model.forward_only(inputs=probe)
    assert err.value.status == 404 and "load your last checkpoint" in err.value.detail
    init_twinkle_client(url, api_key="alice-key", session_heartbeat_interval=1)  # a new session
    model = MultiLoraTransformersModel("tiny")
    model.add_adapter_to_model("default", LoraConfig_r8())
    model.load(uri)
    after = model.forward_only(inputs=probe)["logps"]
    assert torch.allclose(torch.tensor(after), torch.tensor(before), atol=1e-5)
    # another key cannot load it
    init_twinkle_client(url, api_key="mallory-key", session_heartbeat_interval=0)
    other = MultiLoraTransformersModel("tiny")
    other.add_adapter_to_model("default", LoraConfig_r8())
    with pytest.raises(TwinkleClientError) as err:
        other.load(uri)
    assert err.value.status == 404


def LoraConfig_r8():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=32, target_modules="all-linear")


def test_config_file_and_cli(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    good = tmp_path / "ok.yaml"
    good.write_text(f"""
http_options: {{host: 127.0.0.1, port: 8123}}
applications:
  - name: server
    route_prefix: /api/v1
    import_path: server
    args: {{supported_models: [tiny], server_config: {{per_token_model_limit: 3}}}}
  - name: model
    route_prefix: /api/v1/model/tiny
    import_path: model
    args:
      model_id: {tiny_model_dir}
      backend: transformers
      max_loras: 4
      device_group: {{name: model, ranks: 1, device_type: cpu}}
      device_mesh: {{device_type: cpu, dp_size: 1}}
""")
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("max_loras: 4", "max_loras: 4\n      max_lora: 3"))
    env = os.environ | {"PYTHONUNBUFFERED": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "twinkle.server", *args], capture_output=True, text=True,
                              env=env, timeout=120, check=False)

    ok = run("check-config", "-c", str(good))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    fail = run("check-config", "-c", str(bad))
    assert fail.returncode == 2 and "unknown key" in fail.stderr and "max_lora" in fail.stderr
    printed = run("print-config", "-c", str(good), "--format", "json")
    assert '"per_token_model_limit": 3' in printed.stdout
    missing = run("launch", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot read config")
