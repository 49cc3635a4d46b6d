"""A checkpoint may come from a stranger's machine: resuming it must never run code that was pickled into it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig

from twinkle.errors import CheckpointError
from twinkle.model import TransformersModel
from twinkle.model._checkpoint import get_rng_state, load_state_file, set_rng_state


class Payload:
    """What an attacker pickles: unpickling calls ``os.system`` (here: it only writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (4, 12), generator=g)
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def trained(tiny_model_dir: Path) -> TransformersModel:
    torch.manual_seed(0)
    m = TransformersModel(model_id=str(tiny_model_dir), gradient_checkpointing=False)
    m.add_adapter_to_model("default", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    m.set_optimizer("AdamW", lr=1e-3)
    m.set_lr_scheduler("CosineWarmupScheduler", num_warmup_steps=1, num_training_steps=10)
    for i in range(2):
        m.forward_backward(inputs=batch(i))
        m.clip_grad_and_step()
    return m


@pytest.fixture()
def checkpoint(tiny_model_dir, tmp_path) -> Path:
    return Path(trained(tiny_model_dir).save("checkpoint-step-2", output_dir=str(tmp_path), save_optimizer=True))


def test_every_state_file_save_writes_loads_with_weights_only(checkpoint):
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pt"):
        torch.load(checkpoint / name, weights_only=True)  # raises UnpicklingError on anything but plain data


@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt", "rng_state.pt"])
def test_a_pickle_payload_in_a_state_file_does_not_run_on_resume(tiny_model_dir, checkpoint, tmp_path, victim):
    marker = tmp_path / f"pwned-{victim}"
    state = torch.load(checkpoint / victim, weights_only=True)
    state = {**state, "extra": Payload(marker)} if isinstance(state, dict) else [state, Payload(marker)]
    torch.save(state, checkpoint / victim)

    resumer = trained(tiny_model_dir)
    with pytest.raises(CheckpointError, match=rf"refusing to load .*{victim}.*run code"):
        resumer.resume_from_checkpoint(str(checkpoint))
    assert not marker.exists()


def test_the_payload_would_run_with_a_plain_torch_load(tmp_path):
    """The attack is real: the same file executes its payload when unpickled the old way."""
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "x": Payload(marker)}, tmp_path / "optimizer.pt")
    torch.load(tmp_path / "optimizer.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError):
        load_state_file(tmp_path / "optimizer.pt")
    assert not marker.exists()


def test_rng_state_round_trips_through_plain_values():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = get_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_resume_in_a_new_process_restores_everything(tiny_model_dir, checkpoint, tmp_path):
    """The honest path still works end to end: a fresh process resumes with weights_only loads only."""
    code = textwrap.dedent(f"""
        import torch
        from peft import LoraConfig
        from twinkle.model import TransformersModel
        m = TransformersModel(model_id={str(tiny_model_dir)!r}, gradient_checkpointing=False)
        m.add_adapter_to_model("default", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        m.set_optimizer("AdamW", lr=1e-3)
        m.set_lr_scheduler("CosineWarmupScheduler", num_warmup_steps=1, num_training_steps=10)
        print(m.resume_from_checkpoint({str(checkpoint)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'cur_step': 2" in proc.stdout


def test_a_damaged_state_file_is_a_clear_error_not_a_payload_report(tmp_path):
    torch.save({"a": torch.ones(3)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"hello world" * 10)
    for name in ("cut.pt", "junk.pt"):
        with pytest.raises(CheckpointError, match=r"cannot read .*is the checkpoint complete"):
            load_state_file(tmp_path / name)
    torch.save({"x": Payload(tmp_path / "m")}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"GLOBAL posix.system"):
        load_state_file(tmp_path / "evil.pt")
