"""Chaos: jobs from several users over several workers while the harness kill -9s a worker, the dispatcher,
the API and Redis at random moments (each restarted after a random pause), then checks the invariants:

- every job ends in a terminal state, and succeeds (the scripts cannot fail on their own);
- none ran to completion twice: its final line ``done`` appears once in its whole log (all attempts), and only
  its last attempt succeeded;
- every succeeded job's log is complete: its last attempt's log holds each of its lines exactly once;
- every succeeded job's checkpoint is complete: ``output/ckpt/model.bin`` of its last attempt is listed with the
  right size and downloads byte for byte.

Everything is a real process, started by ``scheduler.testing.Stack``: ``redis-server`` (AOF on, fsync always: a
Redis restart keeps its data, as the Helm chart's Redis does), the API, the dispatcher and ``twinkle-worker``
daemons; SQLite and local storage. Short heartbeat (0.5 s) and lease (3 s).

    python bench/chaos.py [--jobs 100] [--users 10] [--workers 3] [--rounds 2] [--seed 1]

Exit status 1 when an invariant is broken; the report says which job and why.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scheduler.testing.stack import Service, Stack, redis_url_of, start_redis

LINES = 20
LEASE_S = 3.0


def job_script(seconds: float) -> str:
    return textwrap.dedent(f"""
        import os, time
        jid = os.environ["TWINKLE_JOB_ID"]
        for i in range({LINES}):
            print(f"line {{i}} of {{jid}}", flush=True)
            time.sleep({seconds / LINES})
        ckpt = os.path.join(os.environ["TWINKLE_OUTPUT_DIR"], "ckpt")
        os.makedirs(ckpt + ".tmp", exist_ok=True)
        with open(os.path.join(ckpt + ".tmp", "model.bin"), "wb") as f:
            f.write((jid * 4096).encode())
        os.replace(ckpt + ".tmp", ckpt)  # appears whole, as a trainer's save does
        print("done", flush=True)
    """)


def expected_checkpoint(job_id: str) -> bytes:
    return (job_id * 4096).encode()


@dataclass
class Report:
    jobs: int
    problems: list[str] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    requeued_jobs: int = 0
    wall_s: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.jobs} jobs in {self.wall_s:.0f} s; end states {self.states}; {self.requeued_jobs} ran more than "
            f"one attempt; kills {self.kills}; problems: {len(self.problems)}"
            + "".join(f"\n  - {p}" for p in self.problems[:30])
        )


def start_platform(tmp: Path, database_url: str, workers: int) -> Stack:
    """Redis (its own ``redis-server``), the API, the dispatcher and ``workers`` workers (``w0``, ``w1``, ...),
    each a ``Service`` the harness can kill -9 and restart."""
    redis = start_redis(tmp)
    stack = Stack(tmp, redis_url=redis_url_of(redis), database_url=database_url, worker_owner="chaos",
                  settings={"lease_s": LEASE_S, "start_deadline_s": 8, "max_attempts": 50})
    stack.add(redis)
    try:
        stack.serve("--log-level", "warning")
        stack.dispatch()
        for i in range(workers):
            stack.start_worker(f"w{i}")
    except BaseException:
        stack.close()
        raise
    return stack


def workers_of(stack: Stack) -> list[Service]:
    return [s for s in stack.services if s.name.startswith("worker-")]


def call(fn, *args, tries: int = 120, **kwargs):
    for _ in range(tries):
        try:
            r = fn(*args, **kwargs)
            if r.status_code < 500:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the API did not answer {args} in {tries / 2:.0f} s")


def run_chaos(tmp: Path, *, jobs: int, users: int, workers: int, rounds: int, seed: int,
              job_seconds: float = 3.0, database_url: str | None = None, timeout_s: float = 900) -> Report:
    rng = random.Random(seed)
    report = Report(jobs)
    t0 = time.monotonic()
    platform = start_platform(tmp, database_url or f"sqlite:///{tmp / 'twinkle.db'}", workers)
    try:
        with platform.http(platform.admin_token) as admin:
            tokens = [call(admin.post, "/users", json={"name": f"chaos-{i}-{uuid.uuid4().hex[:4]}"}).json()["token"]
                      for i in range(users)]
        owner: dict[str, str] = {}
        script = job_script(job_seconds).encode()
        for k in range(jobs):
            token = tokens[k % users]
            with platform.http(token) as c:
                r = call(c.post, "/jobs", data={"name": f"c{k}"}, files={"file": ("train.py", script)})
                assert r.status_code == 201, r.text
                owner[r.json()["id"]] = token

        # the kills: each kind `rounds` times, in random order, at random moments while jobs run
        plan = [kind for kind in ("worker", "dispatcher", "api", "redis") for _ in range(rounds)]
        rng.shuffle(plan)
        for kind in plan:
            time.sleep(rng.uniform(1.0, 4.0))
            target = rng.choice(workers_of(platform)) if kind == "worker" else platform.service(kind)
            target.kill9()
            time.sleep(rng.uniform(0.5, 2 * LEASE_S))
            target.restart()

        deadline = time.monotonic() + timeout_s
        final: dict[str, dict] = {}
        while len(final) < len(owner):
            for jid, token in owner.items():
                if jid in final:
                    continue
                with platform.http(token) as c:
                    job = call(c.get, f"/jobs/{jid}").json()
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    final[jid] = job
            if time.monotonic() > deadline:
                report.problems.append(f"{len(owner) - len(final)} jobs not terminal after {timeout_s:.0f} s")
                break
            time.sleep(0.5)
        report.wall_s = time.monotonic() - t0
        for jid, job in final.items():
            report.states[job["state"]] = report.states.get(job["state"], 0) + 1
            report.requeued_jobs += len(job["attempts"]) > 1
            check_job(platform, owner[jid], job, report)
    finally:
        report.kills = {s.name.removeprefix("worker-"): s.kills for s in platform.services if s.kills}
        platform.close()
    return report


def check_job(platform: Stack, token: str, job: dict, report: Report) -> None:
    jid = job["id"]
    if job["state"] != "succeeded":
        report.problems.append(f"job {jid} ended {job['state']}: {job.get('error')}")
        return
    attempts = job["attempts"]
    if [a["state"] for a in attempts].count("succeeded") != 1 or attempts[-1]["state"] != "succeeded":
        report.problems.append(f"job {jid}: attempts {[a['state'] for a in attempts]}")
    with platform.http(token) as c:
        text = call(c.get, f"/jobs/{jid}/logs").text
        artifacts = call(c.get, f"/jobs/{jid}/artifacts").json()["items"]
        last = text.split("----- attempt ")[-1]
        if text.count("\ndone\n") + text.startswith("done\n") != 1:
            report.problems.append(f"job {jid}: ran to completion {text.count(chr(10) + 'done' + chr(10))} times")
        for i in range(LINES):
            if last.count(f"line {i} of {jid}\n") != 1:
                report.problems.append(f"job {jid}: its last attempt's log has 'line {i}' "
                                       f"{last.count(f'line {i} of {jid}')} times")
                break
        n = attempts[-1]["n"]
        ckpt = [a for a in artifacts if a["attempt"] == n and a["path"] == "output/ckpt/model.bin"]
        want = expected_checkpoint(jid)
        if not ckpt or ckpt[0]["size"] != len(want):
            report.problems.append(f"job {jid}: checkpoint of attempt {n} missing or short: {ckpt}")
            return
        url = ckpt[0]["url"]
        got = httpx.get(url if url.startswith("http") else platform.url + url, timeout=30).content
        if got != want:
            report.problems.append(f"job {jid}: checkpoint content differs ({len(got)} bytes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="kills of each kind")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--job-seconds", type=float, default=3.0)
    ap.add_argument("--keep", action="store_true", help="keep the run's folder (logs of every process)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    try:
        report = run_chaos(tmp, jobs=args.jobs, users=args.users, workers=args.workers, rounds=args.rounds,
                           seed=args.seed, job_seconds=args.job_seconds)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs under {tmp}")
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
