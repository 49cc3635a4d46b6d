"""Submit latency: median time from submitting a trivial script until its process runs, on an idle local worker.

Ours: ``twinkle-submit train.py`` against a local platform (API, dispatcher and one ``twinkle-worker``, all
real processes; the machine's Redis, SQLite, local storage). Baseline, in the same run: ``ray job submit`` of
the same script to a local Ray cluster (``ray start --head --num-cpus 2`` on a port other than Redis's 6379).
Both clocks start just before the CLI is launched and stop at the timestamp the script writes as its first
statement, so CLI start-up, upload, queueing, dispatch and process start all count for both. Goal: ours at most
half of Ray's.

    python bench/submit_latency.py [--runs 7] [--redis-url redis://127.0.0.1:6379/11] [--dispatch-interval 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from scheduler.testing.net import free_port
from scheduler.testing.stack import Stack

BIN = Path(sys.executable).parent
SCRIPT = """import time
t = time.time()
with open({path!r}, "w") as f:
    f.write(repr(t))
print("ran")
"""




def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"timed out waiting for {what}")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINKLE_", "AWS_", "RAY_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def measure(submit_cmd, tmp: Path, runs: int, label: str, wait_done=None) -> list[float]:
    """Run ``submit_cmd(script_path)`` ``runs`` times; latency = script's timestamp - launch time."""
    latencies = []
    for i in range(runs + 1):  # the first run warms caches and is not counted
        folder = tmp / f"{label}-{i}"
        folder.mkdir()
        stamp = tmp / f"{label}-{i}.ts"
        (folder / "train.py").write_text(SCRIPT.format(path=str(stamp)))
        t0 = time.time()
        submitted = submit_cmd(folder / "train.py")
        ts = float(wait_until(lambda stamp=stamp: stamp.exists() and stamp.read_text(), 120, f"{label} run {i}"))
        if wait_done:
            wait_done(submitted)  # the worker is idle again before the next run
        if i:
            latencies.append(ts - t0)
        print(f"  {label} run {i}: {ts - t0:.3f}s{'' if i else ' (warm-up, not counted)'}", flush=True)
    return latencies


class Platform:
    """The API, the dispatcher and one ``twinkle-worker`` (``scheduler.testing.Stack``), and a user."""

    def __init__(self, tmp: Path, redis_url: str, dispatch_interval: float):
        # the scheduler's own timings (not the harness's fast test ones), except the dispatch interval under test
        self.stack = Stack(tmp, redis_url=redis_url, settings={
            "heartbeat_interval_s": None, "lease_s": None, "start_deadline_s": None, "max_bundle_mb": None,
            "dispatch_interval_s": dispatch_interval,
        })
        try:
            self.stack.serve("--log-level", "warning")
            self.stack.dispatch("--log-level", "warning")
            self.token = self.stack.create_user("bench")
            self.stack.start_worker("bench", timeout=120)
        except BaseException:
            self.stack.close()
            raise

    def submit(self, script: Path) -> str:
        env = clean_env()
        env.update(TWINKLE_API_URL=self.stack.url, TWINKLE_TOKEN=self.token,
                   XDG_CONFIG_HOME=str(self.stack.home / "cfg"))
        out = subprocess.run([str(BIN / "twinkle-submit"), str(script)], env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"twinkle-submit failed: {out.stderr}")
        return out.stdout.split("submitted job", 1)[1].split()[0]

    def wait_done(self, job_id: str) -> None:
        self.stack.wait_job(self.token, job_id, timeout=60)

    def close(self) -> None:
        self.stack.close()


class RayCluster:
    """A local Ray head of our own; stopped by killing only the processes under its own temp dir, never with
    ``ray stop`` (which would end every Ray cluster on the machine)."""

    def __init__(self, tmp: Path):
        self.env = clean_env()
        # Ray 2.5x turns token auth on when ~/.ray/auth_token exists; a local bench cluster needs none
        self.env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
        self.dashboard = free_port()
        gcs = free_port()
        while gcs == 6379:
            gcs = free_port()
        # short: Ray puts Unix sockets under it and socket paths are limited to 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tbray-", dir="/tmp"))
        self.counter = 0
        subprocess.run(
            [str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--num-cpus", "2", "--include-dashboard", "true",
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard), "--disable-usage-stats",
             "--temp-dir", str(self.temp_dir)],
            env=self.env, check=True, capture_output=True,
        )
        self.address = f"http://127.0.0.1:{self.dashboard}"
        wait_until(self._up, 120, "the Ray dashboard (job API)")

    def _up(self) -> bool:
        try:
            return httpx.get(self.address + "/api/version", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def submit(self, script: Path) -> str:
        self.counter += 1
        submission_id = f"bench-{uuid.uuid4().hex[:8]}-{self.counter}"
        for _ in range(60):
            out = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", self.address, "--no-wait", "--submission-id",
                 submission_id, "--working-dir", str(script.parent), "--", "python", script.name],
                env=self.env, capture_output=True, text=True,
            )
            # right after start-up the dashboard answers before its job agent; only the warm-up run sees this
            if "No available agent" not in out.stdout + out.stderr:
                break
            time.sleep(1)
        if out.returncode:
            raise RuntimeError(f"ray job submit failed: {out.stdout}{out.stderr}")
        return submission_id

    def wait_done(self, submission_id: str) -> None:
        wait_until(lambda: httpx.get(f"{self.address}/api/jobs/{submission_id}").json().get("status")
                   in ("SUCCEEDED", "FAILED", "STOPPED"), 120, f"Ray job {submission_id}")

    def close(self) -> None:
        import psutil  # a dependency of ray[default]

        mine = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(str(self.temp_dir) in arg for arg in proc.info["cmdline"] or []):
                    mine.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for proc in mine:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(mine, timeout=10)
        for proc in alive:
            proc.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--dispatch-interval", type=float, default=1.0,
                        help="TWINKLE_SCHEDULER_DISPATCH_INTERVAL_S (the default of the scheduler's settings)")
    args = parser.parse_args()
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="twinkle-bench-"))
    try:
        print(f"ours: twinkle-submit -> API -> dispatcher (every {args.dispatch_interval}s) -> twinkle-worker",
              flush=True)
        platform = Platform(tmp, args.redis_url, args.dispatch_interval)
        try:
            ours = measure(platform.submit, tmp, args.runs, "twinkle", platform.wait_done)
        finally:
            platform.close()
        print("baseline: ray job submit -> local Ray cluster (--num-cpus 2)", flush=True)
        ray = RayCluster(tmp)
        try:
            theirs = measure(ray.submit, tmp, args.runs, "ray", ray.wait_done)
        finally:
            ray.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m_ours, m_ray = statistics.median(ours), statistics.median(theirs)
    print()
    print(f"median submit-to-running, {args.runs} runs each (after one warm-up):")
    print(f"  ray job submit   {m_ray:.3f}s")
    print(f"  twinkle-submit   {m_ours:.3f}s")
    print(f"  ratio ours/ray   {m_ours / m_ray:.2f}  (goal <= 0.50)")


if __name__ == "__main__":
    main()
