"""The API under 1,000 concurrent clients: submissions and listings at once, heartbeats measured beside them.

Starts the real API (``twinkle-scheduler serve`` through ``scheduler.testing.Stack``; ``--api-workers``
uvicorn processes) on a fresh SQLite or PostgreSQL database, makes ``--users`` users and one registered worker,
then runs two phases on the same server:

- **baseline**: 30 concurrent clients (the most the API survived before this work: issue 14),
- **load**: ``--clients`` concurrent clients (default 1,000),

each client with its own connection, doing ``--rounds`` x (``POST /jobs`` with a name unique to that submission,
then ``GET /jobs?limit=20``), spread over ``--procs`` client processes. ``--client httpx`` (the default): an
``httpx.AsyncClient`` each, as a user's script would; ``--client raw``: pre-encoded requests on asyncio streams,
answers parsed by httptools, as a load generator like ``wrk`` would, at about a tenth of httpx's CPU per request,
so that on a small machine the figure is the server's and not its clients'. A separate prober process heartbeats
the worker and reads ``/healthz`` every 0.25 s throughout.

Prints, per phase: submissions/s, p50/p99 submit and list latency, server errors (5xx), time-outs, the
heartbeat and healthz max/p99 latency, and where the machine's CPU went (the API, the clients, the rest: the
database, Redis, the prober); then the ratio load/baseline of submissions/s. Afterwards it checks the
database: every submission answered 201 is stored exactly once (by its unique name) and none of the others is.

Exit status 1 if any 5xx, time-out, lost or duplicated job, or late heartbeat (one slower than
``LEASE_S - HEARTBEAT_INTERVAL_S``, the slack a lease has) was seen.

    python bench/api_load.py [--db sqlite|postgres] [--clients 1000] [--rounds 1] [--procs 2] [--api-workers N]
        [--client httpx|raw] [--set api_threads=4 ...]   # --set: a scheduler setting of the API under test
        [--compare DIR]   # DIR: another checkout (the baseline's code), measured in the same run
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import ssl
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httptools
import httpx

from scheduler.testing import InProcessWorker, Stack
from scheduler.testing.stack import SOURCE_ROOT, scratch_database

SCRIPT = b"from twinkle import DeviceGroup\nDeviceGroup(name='default', ranks=1, device_type='cpu')\nprint('hi')\n"
HEARTBEAT_INTERVAL_S = 1.0
LEASE_S = 6.0




def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


# ---------------------------------------------------------------- the server


def start_api(
    tmp: Path, database_url: str, redis_url: str, source_root: Path = SOURCE_ROOT, **settings: object
) -> Stack:
    """The API alone (no dispatcher: nothing should run) on ``database_url``, running the code in ``source_root``;
    ``settings`` are scheduler settings (``api_workers=2``)."""
    stack = Stack(tmp, redis_url=redis_url, database_url=database_url, source_root=source_root,
                  settings={"heartbeat_interval_s": HEARTBEAT_INTERVAL_S, "lease_s": LEASE_S,
                            "queue_estimate_ttl_s": None,  # the code's own default, not the harness's exact 0
                            **settings})
    try:
        stack.serve("--log-level", "warning")
    except BaseException:
        stack.close()
        raise
    return stack


def make_users(stack: Stack, n: int) -> list[str]:
    return [stack.create_user(f"load-{i}-{uuid.uuid4().hex[:6]}") for i in range(n)]


def make_worker(stack: Stack) -> tuple[str, str]:
    """A registered worker nothing can match (device type ``npu``), for the prober to heartbeat as."""
    token = stack.worker_token()
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        worker = InProcessWorker(c, token, "prober", [{"name": "g", "ranks": 1, "device_type": "npu",
                                                       "device_model": None, "memory_gb": None}])
        worker.register()
    assert worker.worker_id is not None
    return token, worker.worker_id


# ---------------------------------------------------------------- the prober (own process)


def _prober(url: str, token: str, worker_id: str, stop: mp.Event, out: mp.Queue) -> None:
    beats: list[float] = []
    health: list[float] = []
    failures = 0
    with httpx.Client(timeout=LEASE_S * 2) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = c.post(f"{url}/api/v1/workers/{worker_id}/heartbeat", json={"running": []},
                           headers={"Authorization": f"Bearer {token}"})
                failures += r.status_code != 200
            except httpx.HTTPError:
                failures += 1
            beats.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            try:
                failures += httpx.get(f"{url}/healthz", timeout=LEASE_S * 2).status_code != 200
            except httpx.HTTPError:
                failures += 1
            health.append(time.perf_counter() - t0)
            stop.wait(0.25)
    out.put({"beats": beats, "health": health, "failures": failures})


# ---------------------------------------------------------------- the clients (several processes)


@dataclass
class Sample:
    kind: str
    status: int  # 0: time-out or connection error
    latency: float
    name: str = ""


async def _client(url: str, token: str, names: list[str], start_at: float, timeout: float,
                  tls: ssl.SSLContext) -> list[Sample]:
    out: list[Sample] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # ``verify=tls``: one TLS context for the process's clients. httpx builds (and loads the CA bundle into) a new
    # one per client otherwise: 52 ms of CPU each, which for 1,000 clients was most of the machine during the run.
    async with httpx.AsyncClient(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout, limits=limits, verify=tls) as c:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        for name in names:
            t0 = time.perf_counter()
            try:
                r = await c.post("/jobs", data={"name": name}, files={"file": ("train.py", SCRIPT)})
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            out.append(Sample("submit", status, time.perf_counter() - t0, name))
            t0 = time.perf_counter()
            try:
                status = (await c.get("/jobs", params={"limit": 20})).status_code
            except httpx.HTTPError:
                status = 0
            out.append(Sample("list", status, time.perf_counter() - t0))
    return out


class _RawConnection:
    """One keep-alive HTTP/1.1 connection sending pre-encoded requests, answers parsed by httptools (uvicorn's own
    C parser): the load a client like ``wrk`` makes, at a fraction of httpx's CPU per request, so the figure
    measures the server rather than the clients that share its two cores."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.done = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.done = True

    async def request(self, data: bytes) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.parser = httptools.HttpResponseParser(self)
        self.done = False
        self.writer.write(data)
        while not self.done:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.parser.feed_data(chunk)
        return int(self.parser.get_status_code())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _encoded_submit(host: str, token: str, name: str) -> bytes:
    b = "twinkle-load-boundary"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n--{b}\r\n'
            'Content-Disposition: form-data; name="file"; filename="train.py"\r\n'
            'Content-Type: text/x-python\r\n\r\n').encode() + SCRIPT + f"\r\n--{b}--\r\n".encode()
    return (f"POST /api/v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={b}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _client_raw(url: str, token: str, names: list[str], start_at: float, timeout: float) -> list[Sample]:
    """``_client``'s requests over ``_RawConnection``."""
    parts = urlsplit(url)
    host = parts.netloc
    listing = f"GET /api/v1/jobs?limit=20 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    conn = _RawConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    out: list[Sample] = []
    await asyncio.sleep(max(0.0, start_at - time.time()))
    try:
        for name in names:
            for kind, data in (("submit", _encoded_submit(host, token, name)), ("list", listing)):
                t0 = time.perf_counter()
                try:
                    status = await asyncio.wait_for(conn.request(data), timeout)
                except (TimeoutError, OSError, httptools.HttpParserError):
                    status = 0
                    conn.close()
                out.append(Sample(kind, status, time.perf_counter() - t0, name if kind == "submit" else ""))
    finally:
        conn.close()
    return out


def _client_proc(url: str, tokens: list[str], plan: list[list[str]], start_at: float, timeout: float,
                 out: mp.Queue, client: str = "httpx") -> None:
    tls = ssl.create_default_context()
    cpu0 = sum(os.times()[:2])  # the clients' own work, not this process's imports

    async def main() -> list[Sample]:
        if client == "raw":
            calls = [_client_raw(url, tokens[i % len(tokens)], names, start_at, timeout)
                     for i, names in enumerate(plan)]
        else:
            calls = [_client(url, tokens[i % len(tokens)], names, start_at, timeout, tls)
                     for i, names in enumerate(plan)]
        results = await asyncio.gather(*calls)
        return [s for r in results for s in r]

    samples = asyncio.run(main())
    out.put(([(s.kind, s.status, s.latency, s.name) for s in samples], sum(os.times()[:2]) - cpu0))


@dataclass
class PhaseResult:
    clients: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    beats: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    probe_failures: int = 0
    server_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0
    clients_cpu_s: float = 0.0

    def of(self, kind: str) -> list[Sample]:
        return [s for s in self.samples if s.kind == kind]

    @property
    def accepted(self) -> list[str]:
        return [s.name for s in self.of("submit") if s.status == 201]

    @property
    def server_errors(self) -> int:
        return sum(1 for s in self.samples if s.status >= 500)

    @property
    def timeouts(self) -> int:
        return sum(1 for s in self.samples if s.status == 0)

    @property
    def submits_per_s(self) -> float:
        return len(self.accepted) / self.wall_s if self.wall_s else 0.0

    def summary(self) -> str:
        sub = [s.latency for s in self.of("submit") if s.status == 201]
        lst = [s.latency for s in self.of("list") if s.status == 200]
        other = sorted({s.status for s in self.samples if s.status not in (200, 201)})
        return (
            f"{self.clients:5d} clients: {len(self.accepted)} accepted in {self.wall_s:.1f} s = "
            f"{self.submits_per_s:.0f} submissions/s; submit p50 {pct(sub, 50):.2f} s p99 {pct(sub, 99):.2f} s; "
            f"list p50 {pct(lst, 50):.2f} s p99 {pct(lst, 99):.2f} s; 5xx {self.server_errors}, "
            f"time-outs {self.timeouts}, other statuses {other or 'none'}; heartbeat p99 {pct(self.beats, 99):.3f} s "
            f"max {max(self.beats, default=0):.3f} s ({len(self.beats)} beats, {self.probe_failures} failed); "
            f"healthz max {max(self.health, default=0):.3f} s; API CPU {self.server_cpu_s:.1f} s = "
            f"{1000 * self.server_cpu_s / max(len(self.samples), 1):.1f} ms per request; clients' CPU "
            f"{self.clients_cpu_s:.1f} s = {1000 * self.clients_cpu_s / max(len(self.samples), 1):.1f} ms per request; "
            f"the rest (database, Redis, prober) {self.machine_cpu_s - self.server_cpu_s - self.clients_cpu_s:.1f} s; "
            f"machine busy {self.machine_cpu_s:.1f} of {self.wall_s * (os.cpu_count() or 1):.1f} CPU-s"
        )


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``: all but idle and iowait), every process."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_phase(server: Stack, tokens: list[str], worker: tuple[str, str], clients: int, rounds: int = 1,
              procs: int = 2, timeout: float = 120.0, tag: str = "", client: str = "httpx") -> PhaseResult:
    """``clients`` concurrent clients, ``rounds`` submit+list each, in ``procs`` processes; heartbeats probed.
    ``client``: ``httpx`` (an ``httpx.AsyncClient`` each) or ``raw`` (``_RawConnection``)."""
    ctx = mp.get_context("spawn")
    tag = tag or uuid.uuid4().hex[:6]
    plans: list[list[list[str]]] = [[] for _ in range(procs)]
    for i in range(clients):
        plans[i % procs].append([f"{tag}-c{i}-r{r}" for r in range(rounds)])
    out: mp.Queue = ctx.Queue()
    probe_out: mp.Queue = ctx.Queue()
    stop = ctx.Event()
    prober = ctx.Process(target=_prober, args=(server.url, worker[0], worker[1], stop, probe_out), daemon=True)
    prober.start()
    start_at = time.time() + 2.0 + 0.002 * clients  # every client connected and waiting before the gun
    api = server.service("api")
    workers = [
        ctx.Process(target=_client_proc, args=(server.url, tokens, plan, start_at, timeout, out, client),
                    daemon=True)
        for plan in plans if plan
    ]
    for p in workers:
        p.start()
    time.sleep(max(0.0, start_at - time.time()))  # the client processes' start-up is not the load
    cpu0, machine0 = api.cpu_s(), machine_busy_s()
    samples: list[Sample] = []
    import queue as queue_mod

    deadline = time.monotonic() + timeout * rounds * 2 + 60
    got, clients_cpu = 0, 0.0
    while got < len(workers):
        try:
            rows, client_cpu = out.get(timeout=1.0)
            samples += [Sample(*row) for row in rows]
            clients_cpu += client_cpu
            got += 1
        except queue_mod.Empty as exc:
            dead = [p for p in workers if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                stop.set()
                raise RuntimeError(f"client processes failed (exit codes {[p.exitcode for p in workers]})") from exc
    wall = time.time() - start_at
    cpu, machine = api.cpu_s() - cpu0, machine_busy_s() - machine0
    for p in workers:
        p.join()
    stop.set()
    probe = probe_out.get()
    prober.join()
    return PhaseResult(clients, wall, samples, probe["beats"], probe["health"], probe["failures"], cpu, machine,
                       clients_cpu)


def stored_names(database_url: str, prefix: str) -> list[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select name from jobs where name like :p"), {"p": prefix + "%"})
            return [n for (n,) in rows]
    finally:
        engine.dispose()


def check_exactly_once(database_url: str, phase: PhaseResult, tag: str) -> list[str]:
    """Problems: a 201 whose job is not stored, a job stored twice, a job stored that was not answered 201."""
    stored = stored_names(database_url, tag + "-")
    problems = []
    dup = {n for n in stored if stored.count(n) > 1}
    if dup:
        problems.append(f"{len(dup)} jobs stored twice")
    missing = set(phase.accepted) - set(stored)
    if missing:
        problems.append(f"{len(missing)} accepted jobs not stored")
    extra = set(stored) - set(phase.accepted)
    # a submission that timed out on the client may still have been stored: that is the client's doubt, not a dup
    timed_out = {s.name for s in phase.of("submit") if s.status == 0}
    if extra - timed_out:
        problems.append(f"{len(extra - timed_out)} jobs stored although refused")
    return problems


# ---------------------------------------------------------------- databases




@dataclass
class Target:
    """One API under test: its code (``source_root``), database, server, users and prober worker."""

    label: str
    database_url: str
    server: Stack
    tokens: list[str]
    worker: tuple[str, str]
    problems: list[str] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    errors: int = 0

    def phase(self, args: argparse.Namespace, clients: int, tag: str) -> PhaseResult:
        result = run_phase(self.server, self.tokens, self.worker, clients, args.rounds, args.procs, tag=tag,
                           client=args.client)
        print(f"{self.label:>13} {tag:<5}", result.summary(), flush=True)
        self.problems += check_exactly_once(self.database_url, result, tag)
        self.late += [b for b in result.beats if b > LEASE_S - HEARTBEAT_INTERVAL_S]
        self.errors += result.server_errors + result.timeouts
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--baseline-clients", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--api-workers", type=int, default=1, help="uvicorn processes of the API")
    ap.add_argument("--client", choices=["httpx", "raw"], default="httpx",
                    help="httpx: an httpx.AsyncClient per client; raw: pre-encoded requests on asyncio streams, "
                         "parsed by httptools, for the server's capacity when the clients cost little")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a scheduler setting for the API under test, e.g. --set api_threads=4 (repeatable)")
    ap.add_argument("--compare", type=Path, default=None, metavar="CHECKOUT",
                    help="also run the API from this checkout (e.g. `git archive main | tar -x -C DIR`), on a "
                         "database of its own, with the phases interleaved, and print its CPU per request beside ours")
    ap.add_argument("--redis", default=os.environ.get("TWINKLE_TEST_REDIS_URL", "redis://127.0.0.1:6379") + "/14")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="api-load-") as d:
        targets: list[Target] = []
        drops = []
        try:
            sources = [("this checkout", SOURCE_ROOT)]
            if args.compare:
                sources.append(("compared", args.compare.resolve()))
            for i, (label, root) in enumerate(sources):
                tmp = Path(d) / f"t{i}"
                tmp.mkdir()
                db_url, drop = scratch_database(args.db, tmp, "twinkle_load")
                drops.append(drop)
                extra = dict(kv.split("=", 1) for kv in args.set)
                server = start_api(tmp, db_url, args.redis, api_workers=args.api_workers, source_root=root, **extra)
                targets.append(Target(label, db_url, server, make_users(server, args.users), make_worker(server)))
            print(f"{len(targets)} API(s) ({args.api_workers} process(es) each), {args.db}, {os.cpu_count()} CPUs "
                  f"(shared; load average {os.getloadavg()[0]:.1f}), {args.users} users, {args.procs} client processes")
            base = {t.label: t.phase(args, args.baseline_clients, "base") for t in targets}
            load = {t.label: t.phase(args, args.clients, "load") for t in reversed(targets)}  # ABBA: order evens out
            ours = targets[0].label
            print(f"ratio: {load[ours].submits_per_s / base[ours].submits_per_s:.2f}x the baseline's submissions/s at "
                  f"{args.clients} vs {args.baseline_clients} clients (goal: >= 300/s on PostgreSQL, p99 < 2 s)")
            if args.compare:
                def ms(r: PhaseResult) -> float:
                    return 1000 * r.server_cpu_s / max(len(r.samples), 1)

                for kind, res in (("base", base), ("load", load)):
                    print(f"API CPU per request ({kind}): this checkout {ms(res[ours]):.2f} ms, compared "
                          f"{ms(res['compared']):.2f} ms = {ms(res['compared']) / ms(res[ours]):.2f}x; submissions/s "
                          f"{res[ours].submits_per_s:.0f} vs {res['compared'].submits_per_s:.0f}")
            slack = LEASE_S - HEARTBEAT_INTERVAL_S
            bad = False
            for t in targets:
                print(f"{t.label}: exactly once: {'yes' if not t.problems else '; '.join(t.problems)}; late heartbeats "
                      f"(> {slack:g} s): {len(t.late)}; 5xx and time-outs: {t.errors}")
                bad = bad or bool(t.problems or t.late or t.errors)
            return 1 if bad else 0
        finally:
            for t in targets:
                t.server.close()
            for drop in drops:
                if drop:
                    drop()


if __name__ == "__main__":
    sys.exit(main())
