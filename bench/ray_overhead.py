"""Ray mode's cost per training step: the usage example's loop under Ray (dp=2, two CPU actors) against the same
loop in local mode under ``torchrun --nproc_per_node 2`` (dp=2, gloo), on the same data, in one run.

    python bench/ray_overhead.py                       # prints both step times and the ratio ray / torchrun
    python bench/ray_overhead.py --rounds 30 --window 20

Both sides build what ``examples/self_cognition.py`` builds (the tiny Qwen2, the bundled self-cognition rows, a
LoRA adapter, AdamW, cosine warm-up, gradient_accumulation_steps=2, a global batch of 8) and train with
``forward_backward`` + ``clip_grad_and_step``. The Ray side's timed work includes everything the driver does per
step (its DataLoader, dispatch, the transfer to the actors); each window ends by waiting for the last step's
result, so lazy calls cannot hide work. Start-up (Ray, actors, model loading) and ``--warmup`` micro-batches are
excluded on both sides.

How it is timed: both sides are started once and kept alive; the parent then runs ``--rounds`` rounds, each a
window of ``--window`` micro-batches on torchrun and one on Ray, the order alternating (ABBA), while the other side
sleeps on a socket read. The headline is the median of the per-round ratios. On a shared virtual machine the speed
of the cores drifts by 30-50% over minutes; paired windows a second apart see the same drift, separate runs do not.
The Ray daemons stay up during the torchrun windows; their CPU then is printed (it is charged to torchrun).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scheduler.testing.net import free_port

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.15


# ---------------------------------------------------------------- one side (a child process)


def _train(role: str, ctrl: str, warmup: int, batch_size: int, max_steps: int) -> None:
    import torch.distributed as dist
    from peft import LoraConfig

    import twinkle
    from twinkle import DeviceGroup, DeviceMesh
    from twinkle.assets import self_cognition_path, tiny_model_path
    from twinkle.dataloader import DataLoader
    from twinkle.dataset import Dataset, DatasetMeta
    from twinkle.model import TransformersModel
    from twinkle.preprocessor import SelfCognitionProcessor

    model_id, data_id = str(tiny_model_path()), str(self_cognition_path())
    mesh = DeviceMesh.from_sizes(dp_size=2, device_type="cpu")
    if role == "ray":
        twinkle.initialize(mode="ray", groups=[DeviceGroup(name="default", ranks=2, device_type="cpu")],
                           global_device_mesh=mesh)
    else:
        twinkle.initialize(mode="local", global_device_mesh=mesh)

    dataset = Dataset(dataset_meta=DatasetMeta(data_id, data_slice=range(160)))  # the 80 bundled rows, twice
    dataset.set_template("Template", model_id=model_id)
    dataset.map(SelfCognitionProcessor("twinkle LLM", "ModelScope community"))
    dataset.encode()
    dataloader = DataLoader(dataset=dataset, batch_size=batch_size, min_batch_size=batch_size)

    model = TransformersModel(model_id=model_id, remote_group="default")
    model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"),
                               gradient_accumulation_steps=2)
    model.set_optimizer(optimizer_cls="AdamW", lr=5e-3)
    model.set_lr_scheduler(scheduler_cls="CosineWarmupScheduler", num_warmup_steps=5,
                           num_training_steps=max_steps // 2)

    def batches():
        while True:  # epochs, as long as the parent asks
            yield from dataloader

    def settle(result) -> None:
        if role == "ray":
            result.result()  # the step is done on every actor
        elif dist.is_initialized():
            dist.barrier()

    stream = batches()
    last = None
    for _ in range(warmup):
        model.forward_backward(inputs=next(stream))
        last = model.clip_grad_and_step()
    settle(last)

    rank = 0 if role == "ray" else int(os.environ.get("RANK", "0"))
    host, port = ctrl.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as conn, conn.makefile("rw") as link:
        link.write(f"ready {role} {rank}\n")
        link.flush()
        for line in link:  # blocks without using the CPU while the other side runs
            command = line.split()
            if command[0] != "run":
                break
            steps = int(command[1])
            daemons_start, actors_start = _ray_cpu() if role == "ray" else (0.0, 0.0)  # before the clock starts
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                model.forward_backward(inputs=next(stream))
                last = model.clip_grad_and_step()
            settle(last)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            daemons_end, actors_end = _ray_cpu() if role == "ray" else (0.0, 0.0)
            if rank == 0:
                link.write(json.dumps({
                    "seconds_per_step": elapsed / steps,
                    # CPU this process used per step: the driver's under Ray, rank 0's under torchrun
                    "process_cpu_per_step": cpu / steps,
                    # the Ray daemons this driver started (raylet, GCS, agents); 0 under torchrun
                    "ray_daemons_cpu_per_step": (daemons_end - daemons_start) / steps,
                    # both training actors together, Ray's per-task work in them included; 0 under torchrun
                    "ray_actors_cpu_per_step": (actors_end - actors_start) / steps,
                }) + "\n")
                link.flush()


def _ray_cpu(root_pid: int | None = None) -> tuple[float, float]:
    """CPU seconds used so far by the processes descended from ``root_pid`` (default: this one): the Ray daemons
    (raylet, GCS, agents, monitors) and, apart, the actors doing the training. (0, 0) where none exist."""
    proc = Path("/proc")
    if not proc.is_dir():
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                name = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
            except (OSError, IndexError):
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, name)
    root = root_pid or os.getpid()
    daemons, actors = 0.0, 0.0
    for _pid, (parent, cpu, name) in stats.items():
        chain = parent
        while chain > 1 and chain != root and chain in stats:
            chain = stats[chain][0]
        if chain == root:
            if name.startswith(b"ray::TwinkleWorker"):
                actors += cpu
            else:
                daemons += cpu
    return daemons, actors


# ---------------------------------------------------------------- the parent


class _Side:
    """A running side: its process, its control connections (rank 0's first) and its output file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log = open(workdir / f"{name}.log", "w+")  # noqa: SIM115 - read back on failure
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.links: dict[int, object] = {}

    def tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-6000:]

    def run(self, steps: int) -> dict:
        for link in self.links.values():
            link.write(f"run {steps}\n")
            link.flush()
        line = self.links[0].readline()
        if not line:
            raise RuntimeError(f"the {self.name} side stopped answering")
        return json.loads(line)

    def stop(self) -> None:
        for link in self.links.values():
            try:
                link.write("quit\n")
                link.flush()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def _connect_sides(server: socket.socket, sides: dict[str, _Side], expected: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(len(sides[name].links) < n for name, n in expected.items()):
        for side in sides.values():
            if side.proc.poll() is not None:
                raise RuntimeError(f"the {side.name} side exited with {side.proc.returncode} before it was ready:\n"
                                   + side.tail())
        server.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sides were not ready within {timeout:g}s") from None
            continue
        conn.settimeout(None)
        link = conn.makefile("rw")
        _, role, rank = link.readline().split()
        sides["torchrun" if role == "local" else "ray"].links[int(rank)] = link


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="paired windows (default 20)")
    parser.add_argument("--window", type=int, default=20, help="micro-batches per window (default 20)")
    parser.add_argument("--warmup", type=int, default=6, help="untimed micro-batches first (default 6)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (default 8)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for start-up")
    parser.add_argument("--role", choices=("local", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--ctrl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.window < 2 or args.window % 2 or args.warmup % 2:
        parser.error("--window and --warmup must be even (an optimizer step every 2 micro-batches), window >= 2")
    max_steps = args.warmup + args.rounds * args.window

    if args.role:
        _train(args.role, args.ctrl, args.warmup, args.batch_size, max_steps)
        return

    from twinkle.assets import self_cognition_path, tiny_model_path

    tiny_model_path(), self_cognition_path()  # made once here, not raced by the ranks
    server = socket.create_server(("127.0.0.1", 0))
    ctrl = f"127.0.0.1:{server.getsockname()[1]}"
    knobs = ["--ctrl", ctrl, "--rounds", str(args.rounds), "--window", str(args.window), "--warmup",
             str(args.warmup), "--batch-size", str(args.batch_size)]
    me = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TWINKLE_MODE", "RAY_ADDRESS"):
        env.pop(var, None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), me, "--role", "local", *knobs]
    ray_cmd = [sys.executable, me, "--role", "ray", *knobs]

    with tempfile.TemporaryDirectory(prefix="twinkle-ray-bench-") as tmp:
        sides = {"torchrun": _Side("torchrun", torchrun, env, Path(tmp)), "ray": _Side("ray", ray_cmd, env,
                                                                                      Path(tmp))}
        try:
            print(f"starting both sides (torchrun 2 ranks, Ray driver + 2 actors), then {args.rounds} rounds of "
                  f"{args.window} micro-batches each ...", flush=True)
            _connect_sides(server, sides, {"torchrun": 2, "ray": 1}, args.timeout)
            rows = []
            for i in range(args.rounds):
                order = ("torchrun", "ray") if i % 2 == 0 else ("ray", "torchrun")
                ray_root = sides["ray"].proc.pid
                result = {}
                for name in order:
                    before = _ray_cpu(ray_root)[0]
                    result[name] = sides[name].run(args.window)
                    if name == "torchrun":  # what the idle Ray cluster cost while torchrun ran
                        result[name]["idle_ray_cpu_per_step"] = (_ray_cpu(ray_root)[0] - before) / args.window
                rows.append(result)
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C too: kill the children, show their output, exit
            for side in sides.values():
                if side.proc.poll() is not None or isinstance(exc, RuntimeError):
                    sys.stderr.write(f"--- {side.name} output ---\n{side.tail()}\n")
            for side in sides.values():
                if side.proc.poll() is None:
                    os.killpg(side.proc.pid, 9)
            raise SystemExit(f"benchmark failed: {exc}") from None
        for side in sides.values():
            side.stop()
    _report(args, rows)


def _report(args: argparse.Namespace, rows: list[dict]) -> None:
    def ms(values):
        return f"{statistics.median(values) * 1000:6.1f} ms (range {min(values) * 1000:.1f}-{max(values) * 1000:.1f})"

    local = [r["torchrun"]["seconds_per_step"] for r in rows]
    ray = [r["ray"]["seconds_per_step"] for r in rows]
    ratios = sorted(r / lo for lo, r in zip(local, ray, strict=True))
    quart = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [ratios[0], 0, ratios[-1]]
    med = lambda key, side="ray": statistics.median(r[side][key] for r in rows) * 1000  # noqa: E731
    print(f"{args.rounds} rounds x {args.window} micro-batches of {args.batch_size} (dp=2, CPU, "
          f"{os.cpu_count()} cores), alternating windows")
    print(f"torchrun --nproc_per_node 2 (local mode): {ms(local)} per micro-batch")
    print(f"ray, 2 CPU actors (ray mode):            {ms(ray)} per micro-batch")
    print(f"  CPU per micro-batch (medians): torchrun rank 0 {med('process_cpu_per_step', 'torchrun'):.1f} ms; "
          f"ray actors {med('ray_actors_cpu_per_step') / 2:.1f} ms each, driver {med('process_cpu_per_step'):.1f} ms, "
          f"Ray daemons {med('ray_daemons_cpu_per_step'):.1f} ms")
    print(f"  the idle Ray cluster used {med('idle_ray_cpu_per_step', 'torchrun'):.2f} ms CPU per torchrun "
          f"micro-batch (charged to torchrun)")
    print(f"  per-round ratios: quartiles {quart[0]:.3f} / {quart[1]:.3f} / {quart[2]:.3f}, "
          f"range {ratios[0]:.3f}-{ratios[-1]:.3f}; ratio of the medians "
          f"{statistics.median(ray) / statistics.median(local):.3f}")
    ratio = statistics.median(ratios)
    print(f"ratio ray / torchrun (median of rounds): {ratio:.3f}  (goal: <= {GOAL}) "
          + ("met" if ratio <= GOAL else "NOT met"))
    with contextlib.suppress(OSError):
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")




if __name__ == "__main__":
    main()
