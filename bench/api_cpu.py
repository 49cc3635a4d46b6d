"""API CPU per request, in process: the robust cost figure on a shared, loaded machine.

Runs the real app (``scheduler.main.create_app``) on a fresh PostgreSQL (or SQLite) database and drives it through
``httpx.ASGITransport`` in the same process, so no network, client or other process is counted: it reports the
process CPU time (user + system) per ``POST /jobs`` (a one-file script) and per ``GET /jobs?limit=20`` (a page of
queued jobs, with queue positions). With ``--compare DIR`` the same measurement runs on the code in ``DIR`` (e.g.
``git archive main | tar -x -C DIR``), alternating runs, and prints the ratio. Wall-clock figures on a shared machine
are noise; CPU time per request is what throughput on a quiet machine is made of.

    python bench/api_cpu.py [--db postgres|sqlite] [--requests 200] [--runs 3] [--compare DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = b"from twinkle import DeviceGroup\nDeviceGroup(name='default', ranks=1, device_type='cpu')\nprint('hi')\n"


def _database(kind: str, tmp: Path) -> tuple[str, object]:
    # scheduler.testing.stack.scratch_database, copied: this runs under the compared checkout's code too, which
    # may predate it
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'twinkle.db'}", None
    import sqlalchemy as sa

    base = os.environ.get("TWINKLE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    name = f"twinkle_cpu_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return sa.make_url(base).set(database=name).render_as_string(hide_password=False), drop


def measure(db: str, requests: int, redis_url: str) -> dict[str, float]:
    """CPU ms per submission and per listing of the app importable here (one process)."""
    import httpx

    from scheduler.main import create_app
    from scheduler.runtime import Runtime
    from scheduler.settings import Settings

    with tempfile.TemporaryDirectory(prefix="api-cpu-") as d:
        tmp = Path(d)
        url, drop = _database(db, tmp)
        settings = Settings(database_url=url, redis_url=redis_url, storage_dir=tmp / "storage",
                            secret_key="bench-secret", admin_token="bench-admin", environment="development")
        rt = Runtime.from_settings(settings)
        app = create_app(runtime=rt)

        async def run() -> dict[str, float]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
                admin = {"Authorization": "Bearer bench-admin"}
                r = await c.post("/api/v1/users", json={"name": "bench"}, headers=admin)
                headers = {"Authorization": f"Bearer {r.json()['token']}"}

                async def submit() -> None:
                    r = await c.post("/api/v1/jobs", data={"name": "j"}, files={"file": ("train.py", SCRIPT)},
                                     headers=headers)
                    assert r.status_code == 201, r.text

                async def listing() -> None:
                    r = await c.get("/api/v1/jobs", params={"limit": 20}, headers=headers)
                    assert r.status_code == 200, r.text

                out = {}
                for name, call in (("submit", submit), ("list", listing)):
                    for _ in range(20):  # warm-up: imports, caches, pool
                        await call()
                    t0 = time.process_time()
                    for _ in range(requests):
                        await call()
                    out[name] = 1000 * (time.process_time() - t0) / requests
                return out

        try:
            return asyncio.run(run())
        finally:
            rt.close()
            if drop:
                drop()  # type: ignore[operator]


def _child(source: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINKLE_SCHEDULER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--db", args.db, "--requests", str(args.requests), "--redis", args.redis],
        env=env, capture_output=True, text=True, check=False, cwd=source,
    )
    if out.returncode:
        raise SystemExit(f"the measurement on {source} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compare", type=Path, default=None, metavar="DIR")
    ap.add_argument("--redis", default=os.environ.get("TWINKLE_TEST_REDIS_URL", "redis://127.0.0.1:6379") + "/14")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.db, args.requests, args.redis)))
        return
    sides = {"this checkout": ROOT} | ({"compared": args.compare.resolve()} if args.compare else {})
    got: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    print(f"{args.db}, {args.requests} requests of each kind per run, {args.runs} runs per side, alternating; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for i in range(args.runs):
        for label, source in (sides.items() if i % 2 == 0 else reversed(sides.items())):
            got[label].append(_child(source, args))
            print(f"  run {i + 1} {label:>13}: submit {got[label][-1]['submit']:.2f} ms, "
                  f"list {got[label][-1]['list']:.2f} ms", flush=True)
    med = {k: {kind: statistics.median(r[kind] for r in v) for kind in ("submit", "list")} for k, v in got.items()}
    for label, m in med.items():
        print(f"{label:>13}: API CPU per request, median: submit {m['submit']:.2f} ms, list {m['list']:.2f} ms")
    if args.compare:
        ours, theirs = med["this checkout"], med["compared"]
        print(f"ratio compared / this checkout: submit {theirs['submit'] / ours['submit']:.2f}x, "
              f"list {theirs['list'] / ours['list']:.2f}x (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
