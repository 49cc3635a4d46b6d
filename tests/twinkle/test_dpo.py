"""DPOLoss and DPOMetric on hand-built tensors, how data parallelism splits pairs, and examples/dpo.py end to end.

The fixture batch: 2 pairs (rows chosen0, rejected0, chosen1, rejected1), labelled lengths 2, 1, 2, 2.
Policy sequence logps (sums): -2, -3, -1, -4; reference: -2.5, -2, -2, -3. So the log-ratios are
chosen 0.5, 1 and rejected -1, -1, and h = (πc - rc) - (πr - rr) = 1.5, 2.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from twinkle.errors import BatchSizeError, ConfigError
from twinkle.loss import DPOLoss
from twinkle.metric import DPOMetric

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dpo.py"

LABELS = torch.tensor([[-100, 1, 1], [-100, 1, -100], [-100, 1, 1], [-100, 1, 1]])
LOGPS = torch.tensor([[0.0, -1, -1], [0, -3, 0], [0, -0.5, -0.5], [0, -2, -2]], dtype=torch.float64)
REF_SEQ = torch.tensor([-2.5, -2.0, -2.0, -3.0])
BETA = 0.1


def _nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _call(loss: DPOLoss, logps: torch.Tensor = LOGPS, **kw):
    outputs = {"logps": logps}
    return loss({"labels": LABELS}, outputs, **kw), outputs


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, (_nls(0.15) + _nls(0.2)) / 2),
        ({"label_smoothing": 0.2}, (0.8 * _nls(0.15) + 0.2 * _nls(-0.15) + 0.8 * _nls(0.2) + 0.2 * _nls(-0.2)) / 2),
        ({"loss_type": "hinge"}, (0.85 + 0.8) / 2),
        # length-averaged: policy -1, -3, -0.5, -2; reference -1.25, -2, -1, -1.5 -> h = 1.25, 1; 1/(2β) = 5
        ({"loss_type": "ipo"}, ((1.25 - 5) ** 2 + (1 - 5) ** 2) / 2),
        # upstream's paired form 1 - σ(βΔc) + σ(βΔr), Δc = 0.5, 1 and Δr = -1, -1
        ({"loss_type": "kto_pair"},
         ((1 - _sig(0.1 * 0.5) + _sig(0.1 * -1)) + (1 - _sig(0.1 * 1) + _sig(0.1 * -1))) / 2),
        # no reference given: zeros, so h = πc - πr = 1, 3
        ({"reference_free": True}, (_nls(0.1) + _nls(0.3)) / 2),
        # plus 0.5 * chosen NLL = 0.5 * (2 + 1) / 4 labelled chosen tokens
        ({"sft_weight": 0.5}, (_nls(0.15) + _nls(0.2)) / 2 + 0.5 * 0.75),
    ],
    ids=["sigmoid", "label_smoothing", "hinge", "ipo", "kto_pair", "reference_free", "sft_weight"],
)
def test_loss_values_by_hand(kwargs, expected):
    ref = {} if kwargs.get("reference_free") else {"ref_logps": REF_SEQ}
    out, _ = _call(DPOLoss(beta=BETA, **kwargs), **ref)
    assert out["num_tokens"] == 0
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_reference_priority_is_upstreams():
    """ref_chosen/ref_rejected first, then ref_logps, then ref_outputs; reference_free only when none is given."""
    expected = (_nls(0.15) + _nls(0.2)) / 2
    split = {"ref_chosen_logps": REF_SEQ[0::2], "ref_rejected_logps": REF_SEQ[1::2]}
    assert _call(DPOLoss(), **split)[0]["loss"].item() == pytest.approx(expected, rel=1e-6)
    wrong = torch.zeros(4)
    assert _call(DPOLoss(), **split, ref_logps=wrong)[0]["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert _call(DPOLoss(), ref_logps=REF_SEQ, ref_outputs={"logps": wrong[:, None]})[0]["loss"].item() == (
        pytest.approx(expected, rel=1e-6))
    assert _call(DPOLoss(reference_free=True), ref_logps=REF_SEQ)[0]["loss"].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="reference logps have 2 positions but the batch has 3"):
        _call(DPOLoss(), ref_logps=torch.zeros(4, 2))


def test_reference_from_ref_outputs_token_logps_truncated_when_padded_wider():
    ref_tokens = torch.tensor([[0.0, -1.5, -1], [0, -2, 0], [0, -1, -1], [0, -1, -2]])  # row sums = REF_SEQ
    expected = _call(DPOLoss(), ref_logps=REF_SEQ)[0]["loss"]
    same = _call(DPOLoss(), ref_outputs={"logps": ref_tokens})[0]["loss"]
    padded = torch.cat([ref_tokens, torch.zeros(4, 5)], dim=1)  # a Ray gather pads on the right with zeros
    wider = _call(DPOLoss(), ref_outputs={"logps": padded})[0]["loss"]
    assert same.item() == pytest.approx(expected.item(), rel=1e-9)
    assert wider.item() == pytest.approx(expected.item(), rel=1e-9)
    # the reference is masked by the batch's labels: a value at an unlabelled position changes nothing
    ref_tokens[1, 2] = -50
    assert _call(DPOLoss(), ref_outputs={"logps": ref_tokens})[0]["loss"].item() == pytest.approx(expected.item())


def test_gradient_raises_chosen_and_lowers_rejected():
    logps = LOGPS.clone().requires_grad_(True)
    out, _ = _call(DPOLoss(), logps=logps, ref_logps=REF_SEQ)
    out["loss"].backward()
    grad = logps.grad
    assert (grad[0::2, 1:] < 0).all()  # descending the loss raises the chosen log-probabilities
    assert grad[1, 1] > 0 and (grad[3, 1:] > 0).all()
    assert (grad[:, 0] == 0).all() and grad[1, 2] == 0  # unlabelled positions get nothing


def test_no_reference_gives_zero_loss_that_still_backpropagates(caplog):
    logps = LOGPS.clone().requires_grad_(True)
    out, outputs = _call(DPOLoss(), logps=logps)
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert torch.equal(logps.grad, torch.zeros_like(logps))
    assert "no reference" in caplog.text and "forward_only" in caplog.text
    assert set(outputs["dpo_stats"]) == {"chosen_logps", "rejected_logps"}


def test_odd_batch_raises_and_says_what_to_do():
    with pytest.raises(BatchSizeError, match=r"even number of rows .* got 3.*2 \* data world size"):
        DPOLoss()({"labels": LABELS[:3]}, {"logps": LOGPS[:3]}, ref_logps=REF_SEQ[:3])
    with pytest.raises(AssertionError):  # upstream asserts; the error is both
        DPOLoss()({"labels": LABELS[:3]}, {"logps": LOGPS[:3]}, ref_logps=REF_SEQ[:3])
    with pytest.raises(BatchSizeError, match="reference has 2 rows but the batch has 4"):
        _call(DPOLoss(), ref_logps=REF_SEQ[:2])


def test_bad_arguments_are_reported_together():
    with pytest.raises(ConfigError) as info:
        DPOLoss(beta=0, loss_type="orpo", sft_weight=-1)
    message = str(info.value)
    assert "beta must be > 0" in message and "loss_type must be one of" in message and "sft_weight" in message
    with pytest.raises(ConfigError, match="label_smoothing applies to loss_type='sigmoid' only"):
        DPOLoss(loss_type="hinge", label_smoothing=0.1)


def test_set_loss_finds_it_by_name(tiny_model_dir):
    from twinkle.model import TransformersModel

    model = TransformersModel(model_id=str(tiny_model_dir))
    model.set_loss("DPOLoss", beta=0.2)
    assert isinstance(model.optimizer_groups[""].loss, DPOLoss) and model.optimizer_groups[""].loss.beta == 0.2


# ---------------------------------------------------------------------------------------------- metric


def test_metric_values():
    """Upstream's DPOMetric: from outputs['logps'] and the forward's ref_outputs, with its own beta."""
    metric = DPOMetric(beta=BETA)
    metric.accumulate({"labels": LABELS}, {"logps": LOGPS}, ref_outputs={"logps": REF_SEQ})
    # a second batch: one pair whose chosen reward is below the rejected one (sums -6, -5; reference -5, -6)
    labels2 = torch.ones(2, 2, dtype=torch.long)
    logps2 = torch.tensor([[-3.0, -3], [-2, -3]])
    metric.accumulate({"labels": labels2}, {"logps": logps2}, ref_outputs={"logps": torch.tensor([[-3.0, -2], [-3, -3]])})
    values = metric.calculate()
    # rewards β(S - S_ref): chosen 0.05, 0.1, -0.1; rejected -0.1, -0.1, 0.1
    assert values == {
        "logps/chosen": "-3.00",  # (-2 - 1 - 6) / 3
        "logps/rejected": "-4.00",  # (-3 - 4 - 5) / 3
        "logps/ref_chosen": "-3.17",  # (-2.5 - 2 - 5) / 3
        "logps/ref_rejected": "-3.67",  # (-2 - 3 - 6) / 3
        "rewards/chosen": "0.0167",
        "rewards/rejected": "-0.0333",
        "rewards/margins": "0.0500",
        "rewards/accuracies": "66.7%",
    }
    assert metric.calculate() == {}  # calculate() resets


def test_metric_list_logps_padded_with_minus_200():
    metric = DPOMetric(beta=BETA)
    rows = [[0.0, -1, -1], [0, -3], [0, -0.5, -0.5], [0, -2, -2]]  # row 1 shorter: padded with -200
    metric.accumulate({"labels": LABELS}, {"logps": rows})
    assert metric.calculate() == {"logps/chosen": "-1.50", "logps/rejected": "-3.50"}


def test_metric_without_reference_reports_logps_only():
    metric = DPOMetric()
    metric.accumulate({"labels": LABELS}, {"logps": LOGPS})
    assert metric.calculate() == {"logps/chosen": "-1.50", "logps/rejected": "-3.50"}
    metric.accumulate(None, None)  # nothing to read
    assert metric.calculate() == {}


def test_model_add_metric_passes_keywords_and_optimizer_group_is_upstreams_name(tiny_model_dir):
    from twinkle.metric import Metric
    from twinkle.model import TransformersModel

    class Probe(Metric):
        def __init__(self, device_mesh=None, process_group=None, beta=None):
            self.beta = beta
            super().__init__(device_mesh, process_group)

        def reset(self):
            pass

    model = TransformersModel(model_id=str(tiny_model_dir))
    model.add_metric(Probe, is_training=True, beta=0.3)
    model.add_metric(DPOMetric, is_training=True, beta=0.5)
    assert model.optimizer_group is model.optimizer_groups
    metrics = model.optimizer_group[""].train_metrics
    assert metrics[-2].beta == 0.3 and metrics[-1].beta == 0.5


# ---------------------------------------------------------------------------------------------- data parallelism


def test_contiguous_dp_slices_keep_pairs_whole_only_for_multiples_of_2_dp():
    """What DataLoader and slice_dp do to an interleaved batch: each data rank gets a contiguous slice."""
    from twinkle.dataloader import DataLoader
    from twinkle.utils.device_mesh import DeviceMesh

    mesh = DeviceMesh.from_sizes(dp_size=2, device_type="cpu")
    assert [mesh.get_slice(4, r) for r in (0, 1)] == [slice(0, 2), slice(2, 4)]  # [c0, r0] | [c1, r1]
    assert [mesh.get_slice(6, r) for r in (0, 1)] == [slice(0, 3), slice(3, 6)]  # a pair split: 3 rows each

    rows = [{"pair": i // 2, "chosen": i % 2 == 0} for i in range(8)]
    for rank in (0, 1):
        loader = DataLoader(rows, batch_size=4, device_mesh=mesh.with_rank(rank))
        for batch in loader:
            assert [r["chosen"] for r in batch] == [True, False]
            assert batch[0]["pair"] == batch[1]["pair"]
    # the 6-row batch's slice is odd on every rank, and the loss refuses it
    with pytest.raises(BatchSizeError, match="even number of rows"):
        DPOLoss()({"labels": LABELS[:3]}, {"logps": LOGPS[:3]}, ref_logps=REF_SEQ[:3])


# ---------------------------------------------------------------------------------------------- the example


def _run_example(tmp_path: Path, nproc: int = 1) -> tuple[list[dict], Path]:
    """examples/dpo.py as a real child process (48 pairs, 12 steps); returns its printed metrics and output dir."""
    import ast

    out = tmp_path / f"out{nproc}"
    skip = ("MODEL_ID", "LR", "WORLD_SIZE", "RANK", "TWINKLE_MODE", "PAIRS", "BATCH_SIZE", "MAX_STEPS", "LOSS_TYPE")
    env = {
        **{k: v for k, v in os.environ.items() if k not in skip},
        "TWINKLE_OUTPUT_DIR": str(out),
        "PAIRS": "48",
        "LOG_EVERY": "3",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, str(EXAMPLE)]
    if nproc > 1:
        from tests.conftest import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), str(EXAMPLE)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 4, proc.stdout  # 48 pairs / 4 per step = 12 steps, printed every 3
    return [ast.literal_eval(line.split(": ", 1)[1]) for line in lines], out


def _pct(value: str) -> float:
    return float(value.rstrip("%"))


@pytest.fixture(scope="module")
def single_run(assets_dir, tmp_path_factory):
    return _run_example(tmp_path_factory.mktemp("dpo"))


@pytest.mark.slow
def test_example_dpo_learns_and_saves_the_adapter(single_run):
    records, out = single_run
    first, last = records[0], records[-1]
    assert float(last["rewards/margins"]) > float(first["rewards/margins"]) + 0.2, records
    assert _pct(last["rewards/accuracies"]) > _pct(first["rewards/accuracies"]), records
    assert _pct(last["rewards/accuracies"]) >= 75, records
    assert float(last["loss"]) < float(first["loss"]), records
    checkpoint = out / "last-checkpoint"
    assert (checkpoint / "adapter_model.safetensors").stat().st_size > 0
    assert (checkpoint / "adapter_config.json").exists()


@pytest.mark.slow
def test_example_dpo_under_torchrun_dp2_matches_one_process(single_run, tmp_path):
    """Batch 8 over dp=2: each rank holds 2 whole pairs, and the run reproduces the single-process metrics."""
    records, _ = single_run
    dp2, out = _run_example(tmp_path, nproc=2)
    # not rewards/accuracies: a count of margins > 0 could flip on a pair whose margin is within rounding of 0
    for key in ("loss", "rewards/margins", "rewards/chosen", "logps/chosen"):
        assert [float(r[key]) for r in dp2] == pytest.approx([float(r[key]) for r in records], rel=1e-4, abs=1e-6)
    assert (out / "last-checkpoint" / "adapter_model.safetensors").exists()
