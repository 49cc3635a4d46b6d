"""The matcher as pure functions: fit rules, best fit, fairness, reasons, and its speed."""

from __future__ import annotations

import time

import pytest

from scheduler.services.matching import (
    Need,
    Offer,
    QueuedJob,
    ShapeCatalog,
    WorkerView,
    device_family,
    fit_groups,
    needs_from_request,
    plan,
)


def gpu(ranks: int, mem: float = 80.0) -> Offer:
    return Offer("cuda", ranks, mem, "H100")


def cpu(ranks: int = 1) -> Offer:
    return Offer("cpu", ranks, None)


def need(ranks: int, family: str = "cuda", mem: float = 0.0) -> Need:
    return Need(family, ranks, mem)


def job(jid: str, user: str, *needs: Need) -> QueuedJob:
    return QueuedJob(jid, user, tuple(needs))


@pytest.mark.parametrize(
    "name,family", [("cuda", "cuda"), ("GPU", "cuda"), ("gpu", "cuda"), ("CPU", "cpu"), ("cpu", "cpu"), ("npu", "npu")]
)
def test_device_families(name, family):
    assert device_family(name) == family


def test_fit_needs_distinct_groups_and_memory():
    offers = (gpu(4, 40), gpu(8, 80))
    assert fit_groups(offers, (need(4),)) == (0,)  # best fit: the smaller group
    assert fit_groups(offers, (need(4, mem=80),)) == (1,)
    assert fit_groups(offers, (need(8), need(4))) == (1, 0)
    assert fit_groups(offers, (need(8), need(8))) is None  # one group cannot serve two needs
    assert fit_groups(offers, (need(1, "cpu"),)) is None
    assert fit_groups((cpu(),), (need(1, "any"),)) == (0,)
    assert fit_groups((Offer("cuda", 8, None),), (need(1, mem=10),)) is None  # unknown memory fits no minimum


def test_request_defaults_to_one_rank_of_anything():
    assert needs_from_request({}) == (Need("any", 1, 0.0),)
    assert needs_from_request({"device_groups": [{"ranks": 2, "device_type": "GPU", "min_memory_gb": 24}]}) == (
        Need("cuda", 2, 24.0),
    )


def test_plan_places_best_fit_and_one_job_per_slot():
    workers = [WorkerView("big", (gpu(8),)), WorkerView("small", (gpu(1), gpu(1)))]
    p = plan(workers, [job("a", "u", need(1)), job("b", "u", need(1)), job("c", "u", need(1)), job("d", "u", need(1))])
    placed = {a.job_id: (a.worker_id, a.slots) for a in p.assignments}
    assert placed["a"] == ("small", (0,)) and placed["b"] == ("small", (1,))
    assert placed["c"] == ("big", (0,))  # the 8-GPU group only once the 1-GPU slots are gone
    assert "d" not in placed and p.reasons["d"].startswith("waiting for a free worker")


def test_busy_slots_are_not_offered_and_lost_workers_are_skipped():
    workers = [WorkerView("w1", (gpu(1), gpu(1)), busy=frozenset({0})), WorkerView("w2", (gpu(1),), live=False)]
    p = plan(workers, [job("a", "u", need(1)), job("b", "u", need(1))])
    assert [(a.job_id, a.worker_id, a.slots) for a in p.assignments] == [("a", "w1", (1,))]
    assert "b" in p.reasons


def test_round_robin_across_users_fifo_within_one():
    workers = [WorkerView(f"w{i}", (gpu(1),)) for i in range(3)]
    jobs = [job("a1", "alice", need(1)), job("a2", "alice", need(1)), job("a3", "alice", need(1)), job("b1", "bob", need(1))]
    p = plan(workers, jobs)
    assert [a.job_id for a in p.assignments] == ["a1", "b1", "a2"]
    assert "waiting" in p.reasons["a3"]


def test_fifo_within_user_blocks_later_jobs_but_held_jobs_do_not():
    workers = [WorkerView("w", (gpu(1),))]
    # a1 needs 8 GPUs: no worker could ever run it -> held, and a2 still goes.
    p = plan(workers, [job("a1", "alice", need(8)), job("a2", "alice", need(1))])
    assert [a.job_id for a in p.assignments] == ["a2"]
    assert p.reasons["a1"] == "held: no registered worker offers 8 cuda ranks"
    # A job that fits the worker but finds it busy blocks the same user's later jobs.
    busy = [WorkerView("w", (gpu(2), cpu()), busy=frozenset({0}))]
    p = plan(busy, [job("x1", "alice", need(2)), job("x2", "alice", need(1, "cpu"))])
    assert p.assignments == []
    assert p.reasons["x1"].startswith("waiting for a free worker: 1 live worker")
    assert "waiting behind job x1" in p.reasons["x2"]


def test_reasons_name_offline_workers_and_multi_group_requests():
    cat = ShapeCatalog([WorkerView("gone", (gpu(8),), live=False), WorkerView("w", (gpu(4),))])
    assert "only offline workers (1)" in cat.hold_reason((need(8),))
    assert cat.hold_reason((need(4),)) is None
    assert "as separate device groups" in cat.hold_reason((need(4), need(4)))


def test_multi_group_job_takes_distinct_slots_on_one_worker():
    workers = [WorkerView("a", (gpu(4),)), WorkerView("b", (gpu(4), gpu(2), cpu()))]
    p = plan(workers, [job("j", "u", need(4), need(2))])
    assert [(a.worker_id, a.slots) for a in p.assignments] == [("b", (0, 1))]


def test_plan_is_fast_for_10k_jobs_on_1k_workers():
    workers = [WorkerView(f"w{i}", tuple(gpu(1 + (i % 4) * 2, 24.0 + (i % 3) * 40) for _ in range(10))) for i in range(1000)]
    jobs = [job(f"j{i}", f"u{i % 50}", need(1 + i % 7, mem=float(i % 5) * 10)) for i in range(10_000)]
    t = time.perf_counter()
    p = plan(workers, jobs)
    elapsed = time.perf_counter() - t
    assert len(p.assignments) + len(p.reasons) == 10_000
    assert len(p.assignments) > 5_000
    assert elapsed < 5.0, f"planning took {elapsed:.2f}s"
