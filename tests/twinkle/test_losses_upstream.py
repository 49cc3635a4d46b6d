"""The upstream losses and metrics, each against numbers computed by hand here (plain ``math``, small tensors).

Preference fixture (interleaved chosen, rejected, chosen, rejected): labelled lengths 2, 1, 2, 2; sequence sums
S = -2, -3, -1, -4; means A = -1, -3, -0.5, -2; the chosen rows' token-mean NLL is (1 + 1 + .5 + .5) / 4 = 0.75.

Policy fixture (2 rows): labelled tokens logp = (-1, -2) and (-0.5); old = (-1.2, -1.9) and (-0.4); advantages
+1 and -1. So d = logp - old = (0.2, -0.1) and (-0.1).
"""

from __future__ import annotations

import math

import pytest
import torch

from twinkle.errors import PairedBatchError
from twinkle.loss import (
    BNPOLoss,
    CISPOLoss,
    CPOLoss,
    DRGRPOLoss,
    GKDLoss,
    GRPOLoss,
    GSPOLoss,
    InfonceLoss,
    ORPOLoss,
    SAPOLoss,
    SimPOLoss,
    torch_loss_mapping,
)
from twinkle.metric import CISPOMetric, EmbeddingMetric, GSPOMetric

LABELS = torch.tensor([[-100, 1, 1], [-100, 1, -100], [-100, 1, 1], [-100, 1, 1]])
LOGPS = torch.tensor([[0.0, -1, -1], [0, -3, 0], [0, -0.5, -0.5], [0, -2, -2]], dtype=torch.float64)
NLL_C = 0.75


def nls(x: float) -> float:
    """-log sigmoid(x)."""
    return math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pref(loss, logps=LOGPS, labels=LABELS):
    return loss({"labels": labels}, {"logps": logps})


# ---------------------------------------------------------------------------------------------- preference


def test_simpo_by_hand():
    # 2.5 * (A_c - A_r) - 0.5: pair 1: 2.5 * 2 - 0.5 = 4.5; pair 2: 2.5 * 1.5 - 0.5 = 3.25
    out = pref(SimPOLoss())
    assert out["num_tokens"] == 0
    assert out["loss"].item() == pytest.approx((nls(4.5) + nls(3.25)) / 2, rel=1e-6)
    # gamma and beta move it as the formula says
    out = pref(SimPOLoss(beta=1.0, gamma=0.0))
    assert out["loss"].item() == pytest.approx((nls(2.0) + nls(1.5)) / 2, rel=1e-6)


def test_cpo_by_hand():
    # 0.1 * (S_c - S_r) = 0.1, 0.3, plus bc_coef * NLL_c
    assert pref(CPOLoss())["loss"].item() == pytest.approx((nls(0.1) + nls(0.3)) / 2 + NLL_C, rel=1e-6)
    assert pref(CPOLoss(beta=1.0, bc_coef=0.0))["loss"].item() == pytest.approx((nls(1) + nls(3)) / 2, rel=1e-6)


def _log_odds(a: float) -> float:
    return a - math.log(1 - math.exp(a))


def test_orpo_by_hand():
    ratio = (nls(_log_odds(-1) - _log_odds(-3)) + nls(_log_odds(-0.5) - _log_odds(-2))) / 2
    assert pref(ORPOLoss())["loss"].item() == pytest.approx(NLL_C + 0.1 * ratio, rel=1e-6)
    assert pref(ORPOLoss(lambda_orpo=1.0))["loss"].item() == pytest.approx(NLL_C + ratio, rel=1e-6)


def test_orpo_is_finite_near_zero_and_far_below():
    labels = torch.tensor([[1], [1]])
    for a in (-1e-12, -0.3, -40.0):  # clamped to -1e-7; the expm1 branch; the log1p branch
        logps = torch.tensor([[a], [-5.0]], dtype=torch.float64, requires_grad=True)
        out = ORPOLoss()({"labels": labels}, {"logps": logps})
        out["loss"].backward()
        assert math.isfinite(out["loss"].item()) and torch.isfinite(logps.grad).all()


def test_preference_losses_descend_toward_the_chosen_row():
    for loss in (SimPOLoss(), CPOLoss(), ORPOLoss()):
        logps = LOGPS.clone().requires_grad_(True)
        pref(loss, logps)["loss"].backward()
        assert (logps.grad[0, 1:] < 0).all(), loss  # raising chosen logps lowers the loss
        assert (logps.grad[:, 0] == 0).all(), loss  # unlabelled positions get nothing


@pytest.mark.parametrize("loss", [SimPOLoss(), CPOLoss(), ORPOLoss()], ids=lambda loss: type(loss).__name__)
def test_odd_batch_is_an_assertion_and_a_batch_size_error(loss):
    with pytest.raises(AssertionError, match="even number of rows"):
        pref(loss, LOGPS[:3], LABELS[:3])
    assert issubclass(PairedBatchError, AssertionError)


def test_logps_from_logits_when_absent():
    """No outputs['logps']: log-softmax over the last T logits at the labels, as upstream."""
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7, dtype=torch.float64)  # 5 positions, labels cover the last 3
    labels = torch.randint(0, 7, (4, 3))
    labels[:, 0] = -100
    logps = torch.log_softmax(logits[:, -3:], -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    logps = logps.masked_fill(labels == -100, 0.0)
    by_logits = CPOLoss()({"labels": labels}, {"logits": logits})["loss"]
    by_logps = CPOLoss()({"labels": labels}, {"logps": logps})["loss"]
    assert by_logits.item() == pytest.approx(by_logps.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- GRPO family

P_LABELS = torch.tensor([[-100, 1, 1], [-100, 1, -100]])
P_LOGPS = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0]], dtype=torch.float64)
P_OLD = torch.tensor([[0.0, -1.2, -1.9], [0.0, -0.4, 0.0]], dtype=torch.float64)
ADV = [1.0, -1.0]
E2, EM1 = math.exp(0.2), math.exp(-0.1)


def policy(loss, logps=P_LOGPS, **kw):
    return loss({"labels": P_LABELS}, {"logps": logps}, old_logps=P_OLD, advantages=ADV, **kw)


# per-token GRPO losses: row 0 (A=+1): -min(1.2214, 1.2) = -1.2 and -min(.9048, .9048); row 1 (A=-1): +.9048
GRPO_TOKENS = ([-1.2, -EM1], [EM1])


def test_grpo_by_hand():
    expected = ((GRPO_TOKENS[0][0] + GRPO_TOKENS[0][1]) / 2 + GRPO_TOKENS[1][0]) / 2
    assert policy(GRPOLoss())["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_bnpo_by_hand():
    expected = (sum(GRPO_TOKENS[0]) + GRPO_TOKENS[1][0]) / 3
    assert policy(BNPOLoss())["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_dr_grpo_by_hand():
    expected = (sum(GRPO_TOKENS[0]) + GRPO_TOKENS[1][0]) / (2 * 4)
    assert policy(DRGRPOLoss(max_completion_length=4))["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_gspo_by_hand():
    # one ratio per sequence: row 0 exp((0.2 - 0.1) / 2) = e^0.05 (inside the clip), row 1 e^-0.1
    r0, r1 = math.exp(0.05), EM1
    expected = (-r0 + r1) / 2  # row 0: -r0 * 1 on each token, token-mean -r0; row 1: -min(-r1, -r1) = r1
    assert policy(GSPOLoss())["loss"].item() == pytest.approx(expected, rel=1e-6)
    # with a tight clip row 0's ratio is capped at 1.01
    # row 1: clip(r1, 0.99, 1.01) = 0.99, and -min(-r1, -0.99) = 0.99
    assert policy(GSPOLoss(epsilon=0.01))["loss"].item() == pytest.approx((-1.01 + 0.99) / 2, rel=1e-5)


def test_sapo_by_hand():
    row0 = (-4 * sig(E2 - 1) * 1 + -4 * sig(EM1 - 1) * 1) / 2
    row1 = -4 * sig(EM1 - 1) * -1
    assert policy(SAPOLoss())["loss"].item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # tau_neg applies where A <= 0: (4 / 2) * sigma(2 (r - 1))
    row1_tau2 = -(4 / 2) * sig(2 * (EM1 - 1)) * -1
    assert policy(SAPOLoss(tau_neg=2.0))["loss"].item() == pytest.approx((row0 + row1_tau2) / 2, rel=1e-6)


def test_cispo_by_hand_and_its_gradient():
    # -sg[min(r, 1.2)] * A * logp: 1.2 * 1, min(.9048) * 2, and -(.9048 * -1 * -0.5)
    tokens = [1.2 * 1.0, EM1 * 2.0, -EM1 * 0.5]
    assert policy(CISPOLoss())["loss"].item() == pytest.approx(sum(tokens) / 3, rel=1e-6)
    assert policy(CISPOLoss(), num_items_in_batch=6)["loss"].item() == pytest.approx(sum(tokens) / 6, rel=1e-6)
    logps = P_LOGPS.clone().requires_grad_(True)
    policy(CISPOLoss(), logps=logps)["loss"].backward()
    # the weight is detached: d loss / d logp = -w * A / N
    assert logps.grad[0, 1].item() == pytest.approx(-1.2 / 3, rel=1e-6)
    assert logps.grad[1, 1].item() == pytest.approx(EM1 / 3, rel=1e-6)


def test_grpo_family_reads_upstreams_entropies_key():
    entropies = torch.tensor([[0.0, 2.0, 4.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    base = policy(GRPOLoss())["loss"].item()
    out = GRPOLoss(entropy_coef=0.5)({"labels": P_LABELS}, {"logps": P_LOGPS, "entropies": entropies},
                                     old_logps=P_OLD, advantages=ADV)
    assert out["loss"].item() == pytest.approx(base - 0.5 * ((2 + 4) / 2 + 1) / 2, rel=1e-6)


def test_mapping_names_are_upstreams():
    assert torch_loss_mapping["dr_grpo"] is DRGRPOLoss and torch_loss_mapping["infonce"] is InfonceLoss
    for name in ("cpo", "orpo", "simpo", "gspo", "sapo", "cispo", "bnpo", "gkd", "dpo", "grpo"):
        assert name in torch_loss_mapping


# ---------------------------------------------------------------------------------------------- GKD


def _log_softmax(xs):
    m = max(xs)
    z = math.log(sum(math.exp(x - m) for x in xs)) + m
    return [x - z for x in xs]


def _kl(p, q):  # KL(P || Q) for log-distributions p, q
    return sum(math.exp(a) * (a - b) for a, b in zip(p, q, strict=True))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 0.3])
def test_gkd_by_hand(beta):
    student = [[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]
    teacher = [[3.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    labels = torch.tensor([[1, 2]])
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        s, t = _log_softmax([x / 2 for x in s_row]), _log_softmax([x / 2 for x in t_row])  # temperature 2
        if beta == 0:
            expected += _kl(t, s)
        elif beta == 1:
            expected += _kl(s, t)
        else:
            m = [math.log((1 - beta) * math.exp(a) + beta * math.exp(b)) for a, b in zip(s, t, strict=True)]
            expected += beta * _kl(t, m) + (1 - beta) * _kl(s, m)
    out = GKDLoss(beta=beta, temperature=2.0)(
        {"labels": labels}, {"logits": torch.tensor([student], dtype=torch.float64)},
        teacher_logits=torch.tensor([teacher], dtype=torch.float64))
    assert out["loss"].item() == pytest.approx(expected / 2, rel=1e-6)


def test_gkd_checks_and_topk():
    with pytest.raises(ValueError, match="beta"):
        GKDLoss(beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        GKDLoss(temperature=0)
    logits = torch.tensor([[[1.0, 2.0, 3.0, 9.0]]])
    with pytest.raises(ValueError, match="teacher"):
        GKDLoss()({"labels": torch.tensor([[0]])}, {"logits": logits})
    # top-k: the student is gathered at the teacher's indices and both renormalised over them
    idx = torch.tensor([[[0, 2]]])
    t_logp = torch.tensor([[[math.log(0.25), math.log(0.75)]]])
    out = GKDLoss(beta=0.0)({"labels": torch.tensor([[0]])}, {"logits": logits}, teacher_topk_logprobs=t_logp,
                            teacher_topk_indices=idx)
    s = _log_softmax([1.0, 3.0])
    assert out["loss"].item() == pytest.approx(_kl([math.log(0.25), math.log(0.75)], s), rel=1e-5)


# ---------------------------------------------------------------------------------------------- InfoNCE


def _unit(x, y):
    n = math.hypot(x, y)
    return (x / n, y / n)


def test_infonce_by_hand():
    q1, p1, n1 = (1.0, 0.0), _unit(1, 1), (0.0, 1.0)
    q2, p2, n2 = (0.0, 1.0), _unit(-1, 1), (1.0, 0.0)
    emb = torch.tensor([q1, p1, n1, q2, p2, n2], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0, 1, 0, 0])
    dot = lambda a, b: a[0] * b[0] + a[1] * b[1]  # noqa: E731
    tau = 0.5

    def ce(q, docs, target):
        logits = [dot(q, d) / tau for d in docs]
        return -logits[target] + math.log(sum(math.exp(x) for x in logits))

    own = (ce(q1, [p1, n1], 0) + ce(q2, [p2, n2], 0)) / 2
    out = InfonceLoss(temperature=tau, use_batch=False)({"labels": labels}, {"embeddings": emb})
    assert out["loss"].item() == pytest.approx(own, rel=1e-6)
    docs = [p1, n1, p2, n2]
    batch = (ce(q1, docs, 0) + ce(q2, docs, 2)) / 2
    out = InfonceLoss(temperature=tau)({"labels": labels}, {"embeddings": emb})
    assert out["loss"].item() == pytest.approx(batch, rel=1e-6)
    with pytest.raises(ValueError, match="mark the first row"):
        InfonceLoss()({"labels": torch.tensor([0, 1, 0])}, {"embeddings": emb[:3]})


# ---------------------------------------------------------------------------------------------- metrics


def test_gspo_and_cispo_metrics_by_hand():
    inputs, outputs = {"labels": P_LABELS}, {"logps": P_LOGPS}
    kl = [math.exp(d) - d - 1 for d in (0.2, -0.1, -0.1)]
    common = {
        "train/policy_confidence": pytest.approx(math.exp(-3.5 / 3), rel=1e-6),
        "train/mean_new_logp": pytest.approx(-3.5 / 3, rel=1e-6),
        "train/mean_old_logp": pytest.approx(-3.5 / 3, rel=1e-6),  # -1.2 - 1.9 - 0.4
        "train/logp_diff_mean": pytest.approx(0.0, abs=1e-6),
        "train/approx_kl": pytest.approx(sum(kl) / 3, rel=1e-5),
        "train/token_kl_max": pytest.approx(max(kl), rel=1e-5),
        "train/token_ratio_max": pytest.approx(E2, rel=1e-6),
    }
    cispo = CISPOMetric(epsilon=0.05)
    cispo.accumulate(inputs, outputs, old_logps=P_OLD, advantages=ADV)
    values = cispo.calculate()
    # per token, either sign of A: low = r < 0.95 (two tokens), high = r > 1.05 (one token)
    assert values == {**common, "train/clip_ratio_low": pytest.approx(2 / 3), "train/clip_ratio_high":
                      pytest.approx(1 / 3), "train/clip_ratio": pytest.approx(1.0)}
    assert all(isinstance(v, float) for v in values.values())
    gspo = GSPOMetric(epsilon=0.05)
    gspo.accumulate(inputs, outputs, old_logps=P_OLD, advantages=ADV)
    # per sequence: row 0 e^0.05 > 1.05 with A > 0 (high); row 1 e^-0.1 < 0.95 with A < 0 (low)
    assert gspo.calculate() == {**common, "train/clip_ratio_low": pytest.approx(0.5), "train/clip_ratio_high":
                                pytest.approx(0.5), "train/clip_ratio": pytest.approx(1.0)}
    assert gspo.calculate() == {}


def test_embedding_metric_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, 1.0]])
    metric = EmbeddingMetric()
    metric.accumulate({"labels": torch.tensor([1, 0, 1, 0])}, {"embeddings": emb}, loss=torch.tensor(0.25))
    metric.accumulate(None, None, grad_norm=1.5)
    assert metric.calculate() == {
        "pos_sim": "0.8000", "pos_sim_min": "0.6000", "pos_sim_max": "1.0000",
        "neg_sim": "0.4000",  # a1 . p2 = 0, a2 . p1 = 0.8
        "loss": "0.2500", "grad_norm": "1.500000",
    }
