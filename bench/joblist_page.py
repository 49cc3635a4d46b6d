"""How fast the job list page serves with 10,000 jobs in the database.

Starts the real API (``twinkle-scheduler serve``) on a fresh SQLite database, seeds 10,000 jobs (10 users of
1,000 each; each user's newest 10 (``--queued``) queued, 2 running, the rest ended), signs in through
``POST /auth/session`` like the browser, then times what the page needs before it can show the list, over one
keep-alive connection:

    GET /                                   the HTML shell (its JS and CSS are cached as immutable)
    GET /api/v1/users/me                    the session check app.js makes
    GET /api/v1/jobs?limit=25&offset=0      the first page the list shows

Two servers run on the same database: the current code, and a baseline whose queue estimate is the
per-job query path the API used before (``queue_positions_per_job`` below: one query for the users' heads,
then one count query per queued job on the page). Samples alternate between the two, and the first page's
median on each gives the ratio; both must return the same positions. ``GET /healthz`` on the current server
is printed as the floor. Target: page median under 200 ms.

    python bench/joblist_page.py [--jobs 10000] [--samples 60] [--queued 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from scheduler.testing.stack import Stack, redis_url_of, start_redis

BIN = Path(sys.executable).parent
PAGE_SIZE = 25  # webui/static/pages/jobs.js PAGE_SIZE




def seed(database_url: str, owner_id: str, jobs: int, users: int = 10, queued: int = 10) -> None:
    """Insert ``jobs`` jobs spread over ``users`` users (the signed-in user among them), in one transaction."""
    import sqlalchemy as sa

    from scheduler.db import JobModel, UserModel, new_id

    engine = sa.create_engine(database_url)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    user_ids = [owner_id]
    with engine.begin() as conn:
        for i in range(users - 1):
            uid = new_id()
            conn.execute(sa.insert(UserModel.__table__).values(id=uid, name=f"bench-{i}", created_at=now))
            user_ids.append(uid)
        rows = []
        per_user = jobs // users
        for u, uid in enumerate(user_ids):
            for k in range(per_user):
                # k counts back from the newest: the newest `queued` are queued, the next 2 running, the rest ended.
                created = now - dt.timedelta(seconds=(k * users + u) * 30)
                ended = ("succeeded", "failed", "cancelled")[k % 3]
                state = "queued" if k < queued else "running" if k < queued + 2 else ended
                rows.append(
                    {
                        "id": new_id(),
                        "user_id": uid,
                        "name": f"job-{u}-{k}",
                        "state": state,
                        "entrypoint": "train.py",
                        "request": {
                            "device_groups": [
                                {"name": "default", "ranks": 1, "device_type": "any", "min_memory_gb": 0.0}
                            ]
                        },
                        "warnings": [],
                        "bundle_key": f"users/{uid}/jobs/x/bundle.zip",
                        "bundle_size": 1234,
                        "attempt": 0 if state == "queued" else 1,
                        "worker_id": None,
                        "slots": None,
                        # waiting, not held: a held job (no registered worker could ever run it) has no position
                        "pending_reason": "waiting for a free worker" if state == "queued" else None,
                        "error": None,
                        "created_at": created,
                        "queued_at": created,
                        "assigned_at": None if state == "queued" else created,
                        "started_at": None if state == "queued" else created,
                        "ended_at": created + dt.timedelta(minutes=20) if k >= queued + 2 else None,
                        "updated_at": created,
                    }
                )
        conn.execute(sa.insert(JobModel.__table__), rows)
    engine.dispose()


def queue_positions_per_job(session, jobs):  # the baseline, as the API had it
    """The per-job query path (1 + one query per queued job on the page), kept here as the baseline."""
    import sqlalchemy as sa

    from scheduler.db import JobModel, JobState

    queued = [j for j in jobs if j.state == JobState.QUEUED]
    if not queued:
        return {}
    heads = {
        uid: (first, count)
        for uid, first, count in session.execute(
            sa.select(JobModel.user_id, sa.func.min(JobModel.created_at), sa.func.count())
            .where(JobModel.state == JobState.QUEUED)
            .group_by(JobModel.user_id)
        )
    }
    order = sorted(heads, key=lambda u: heads[u][0])
    rank_of = {u: i for i, u in enumerate(order)}
    out = {}
    for job in queued:
        k = session.scalar(
            sa.select(sa.func.count())
            .select_from(JobModel)
            .where(
                JobModel.user_id == job.user_id,
                JobModel.state == JobState.QUEUED,
                sa.or_(
                    JobModel.created_at < job.created_at,
                    sa.and_(JobModel.created_at == job.created_at, JobModel.id < job.id),
                ),
            )
        ) or 0
        mine = rank_of.get(job.user_id, 0)
        ahead = k
        for uid, (_, count) in heads.items():
            if uid != job.user_id:
                ahead += min(count, k + 1 if rank_of[uid] < mine else k)
        out[job.id] = ahead + 1
    return out


def serve_per_job() -> None:
    """Run the API with the baseline's positions (the routes look ``estimates`` up on the module per call)."""
    from scheduler.cli import app
    from scheduler.services import queue as queue_service

    def baseline(session, jobs):  # positions only: no expected start, nothing held (no workers in this bench)
        return {jid: queue_service.Estimate(pos, None, False)
                for jid, pos in queue_positions_per_job(session, jobs).items()}

    queue_service.estimates = baseline
    app(["serve", "--log-level", "warning"])


def timed(client: httpx.Client, path: str) -> float:
    start = time.perf_counter()
    r = client.get(path)
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--queued", type=int, default=10, help="queued jobs per user (the newest ones)")
    parser.add_argument("--serve-per-job", action="store_true", help=argparse.SUPPRESS)  # the baseline server
    args = parser.parse_args()
    if args.serve_per_job:
        serve_per_job()
        return

    home = Path(tempfile.mkdtemp(prefix="twinkle-bench-joblist-"))
    redis = start_redis(home)
    # the scheduler's own timings, not the harness's fast test ones: only the API runs here
    timings = dict.fromkeys(("heartbeat_interval_s", "lease_s", "start_deadline_s", "max_bundle_mb"))
    new_stack = Stack(home, redis_url=redis_url_of(redis), settings=timings)
    old_stack = Stack(home, redis_url=redis_url_of(redis), database_url=new_stack.database_url,
                      admin_token=new_stack.admin_token, settings=timings)
    database_url, admin = new_stack.database_url, new_stack.admin_token
    base, old_base = new_stack.url, old_stack.url
    try:
        new_stack.serve("--log-level", "warning")  # migrates the database before the second server starts
        old_stack.serve(name="api-per-job", argv=[sys.executable, __file__, "--serve-per-job"])

        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post("/api/v1/users", json={"name": "bench"}, headers={"Authorization": f"Bearer {admin}"})
            r.raise_for_status()
            token, user_id = r.json()["token"], r.json()["user"]["id"]
        t0 = time.perf_counter()
        seed(database_url, user_id, args.jobs, queued=args.queued)
        print(f"seeded {args.jobs} jobs in {time.perf_counter() - t0:.1f}s")

        with httpx.Client(base_url=base, timeout=30) as browser, httpx.Client(base_url=old_base, timeout=30) as old:
            browser.post("/api/v1/auth/session", json={"token": token}).raise_for_status()
            old.post("/api/v1/auth/session", json={"token": token}).raise_for_status()
            first = f"/api/v1/jobs?limit={PAGE_SIZE}&offset=0"
            body = browser.get(first).json()
            assert body["total"] == args.jobs // 10 and len(body["items"]) == PAGE_SIZE, body["total"]
            positions = {j["id"]: j["queue_position"] for j in body["items"]}
            assert sum(1 for p in positions.values() if p) == min(args.queued, PAGE_SIZE), positions
            old_positions = {j["id"]: j["queue_position"] for j in old.get(first).json()["items"]}
            assert positions == old_positions, f"positions differ from the per-job path: {positions} {old_positions}"

            for _ in range(5):  # warm up connections, caches and SQLite's page cache
                timed(browser, "/healthz")
                timed(browser, "/")
                timed(browser, first)
                timed(old, first)
            floor, shell, me, jobs, page, old_jobs = [], [], [], [], [], []
            for i in range(args.samples):
                if i % 2:  # alternate which server goes first, so neither always meets a warmer machine
                    old_jobs.append(timed(old, first))
                floor.append(timed(browser, "/healthz"))
                a = timed(browser, "/")
                b = timed(browser, "/api/v1/users/me")
                d = timed(browser, first)
                if not i % 2:
                    old_jobs.append(timed(old, first))
                shell.append(a)
                me.append(b)
                jobs.append(d)
                page.append(a + b + d)

        ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
        print(f"jobs in the database: {args.jobs} ({args.jobs // 10} of them the signed-in user's, "
              f"{args.queued * 10} queued in all, "
              f"{sum(1 for p in positions.values() if p)} queued on the first page); {args.samples} samples")
        print(f"  floor GET /healthz              median {ms(floor):7.2f} ms")
        print(f"  GET / (HTML shell)              median {ms(shell):7.2f} ms")
        print(f"  GET /api/v1/users/me            median {ms(me):7.2f} ms")
        print(f"  GET {first}  median {ms(jobs):7.2f} ms  (positions: two queries)")
        print(f"  baseline, same page             median {ms(old_jobs):7.2f} ms"
              "  (positions: 1 + one query per queued job)")
        print(f"ratio first page, baseline / new: {ms(old_jobs) / ms(jobs):.2f}x")
        p90 = statistics.quantiles(page, n=10)[-1] * 1000
        print(f"job list page (shell + me + first page) median {ms(page):.2f} ms, p90 {p90:.2f} ms"
              f"  (target: median < 200 ms: {'met' if ms(page) < 200 else 'NOT met'})")
    finally:
        new_stack.close()
        old_stack.close()
        redis.stop()


if __name__ == "__main__":
    main()
