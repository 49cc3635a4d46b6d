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
    held_devices,
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
    t = time.process_time()  # CPU time: a loaded CI machine stretches wall time, not this
    p = plan(workers, jobs)
    elapsed = time.process_time() - t
    assert len(p.assignments) + len(p.reasons) == 10_000
    assert len(p.assignments) > 5_000
    assert elapsed < 5.0, f"planning took {elapsed:.2f}s"


# ---------------------------------------------------------------- devices shared by count (pools)


def pool(ranks: int, family: str = "cuda", mem: float = 80.0) -> Offer:
    return Offer(family, ranks, mem, "H100", pooled=True)


def test_one_8_gpu_pool_runs_eight_1_gpu_jobs_side_by_side_on_disjoint_devices():
    p = plan([WorkerView("w", (pool(8),))], [job(f"j{i}", f"u{i}", need(1)) for i in range(9)])
    assert len(p.assignments) == 8
    devices = [d for a in p.assignments for d in a.devices[0]]
    assert sorted(devices) == list(range(8))  # each GPU given once
    assert "all busy" in p.reasons["j8"]


def test_a_pool_with_devices_in_use_offers_only_the_rest():
    w = WorkerView("w", (pool(4),), in_use={0: frozenset({0, 2})})
    p = plan([w], [job("big", "u1", need(3)), job("two", "u2", need(2))])
    assert [(a.job_id, a.devices) for a in p.assignments] == [("two", ((1, 3),))]
    assert "all busy" in p.reasons["big"]


def test_an_8_gpu_job_fits_an_8_gpu_pool_but_not_eight_1_gpu_slots():
    slots = WorkerView("slots", tuple(gpu(1) for _ in range(8)))
    assert plan([slots], [job("j", "u", need(8))]).assignments == []
    a = plan([WorkerView("pool", (pool(8),))], [job("j", "u", need(8))]).assignments
    assert a[0].devices == (tuple(range(8)),)


def test_best_fit_fills_a_half_used_pool_before_cutting_into_an_idle_one():
    busy = WorkerView("half", (pool(8),), in_use={0: frozenset(range(6))})
    idle = WorkerView("idle", (pool(8),))
    a = plan([idle, busy], [job("j", "u", need(2))]).assignments
    assert (a[0].worker_id, a[0].devices) == ("half", ((6, 7),))


def test_two_groups_of_one_job_share_a_pool_but_never_a_static_slot():
    needs = (Need("cuda", 2, name="actor"), Need("cuda", 2, name="rollout"))
    a = plan([WorkerView("w", (pool(4),))], [QueuedJob("j", "u", needs)]).assignments
    assert a[0].slots == (0, 0) and sorted(a[0].devices) == [(0, 1), (2, 3)]
    assert plan([WorkerView("w", (gpu(4),))], [QueuedJob("j", "u", needs)]).assignments == []


def test_a_static_slot_stays_one_job_at_a_time_next_to_a_pool():
    w = WorkerView("w", (gpu(2), pool(2, "cpu")))
    p = plan([w], [job("g1", "u1", need(1)), job("g2", "u2", need(1)), job("c1", "u3", need(1, "cpu")),
                   job("c2", "u4", need(1, "cpu"))])
    placed = {a.job_id: a.devices for a in p.assignments}
    assert placed == {"g1": ((0, 1),), "c1": ((0,),), "c2": ((1,),)}  # a static slot is taken whole


def test_fairness_holds_across_a_shared_pool():
    jobs = [job("a1", "alice", need(2)), job("a2", "alice", need(2)), job("b1", "bob", need(2))]
    p = plan([WorkerView("w", (pool(4),))], jobs)
    assert {a.job_id for a in p.assignments} == {"a1", "b1"}  # bob's first job goes before alice's second


def test_held_devices_reads_new_rows_and_rows_from_before_pools():
    offers = (gpu(2), pool(4))
    assert held_devices([0], offers) == [(0, (0, 1))]
    assert held_devices([{"slot": 1, "devices": [2, 3]}], offers) == [(1, (2, 3))]
    assert held_devices([{"slot": 7, "devices": [0]}, "x", None], offers) == []
