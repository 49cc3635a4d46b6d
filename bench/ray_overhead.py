"""Ray mode's cost per training step: the usage example's loop under Ray (dp=2, two CPU actors) against the same
loop in local mode under ``torchrun --nproc_per_node 2`` (dp=2, gloo), on the same data, in one run.

    python bench/ray_overhead.py                 # prints both step times and the ratio ray / torchrun
    python bench/ray_overhead.py --steps 40 --repeats 3

Both sides build what ``examples/self_cognition.py`` builds (the tiny Qwen2, the bundled self-cognition rows, a
LoRA adapter, AdamW, cosine warm-up, gradient_accumulation_steps=2, a global batch of 8) and time ``--steps``
micro-batches of ``forward_backward`` + ``clip_grad_and_step`` after ``--warmup`` untimed ones. The Ray side
includes everything the driver does per step (its DataLoader, dispatch, the transfer to the actors) and ends the
timed window by waiting for the last step's result, so lazy calls cannot hide work. Start-up (Ray, actors, model
loading) is excluded on both sides. With ``--repeats`` the modes alternate and each reports its best run, plus the
medians and the per-round ratios (on a shared machine, the median of the per-round ratios is the steadier figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "BENCH_RESULT "


def _train(role: str, steps: int, warmup: int, batch_size: int) -> None:
    """One side of the comparison (run as a child process)."""
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

    dataset = Dataset(dataset_meta=DatasetMeta(data_id, data_slice=range((steps + warmup) * batch_size)))
    dataset.set_template("Template", model_id=model_id)
    dataset.map(SelfCognitionProcessor("twinkle LLM", "ModelScope community"))
    dataset.encode()
    dataloader = DataLoader(dataset=dataset, batch_size=batch_size, min_batch_size=batch_size)

    model = TransformersModel(model_id=model_id, remote_group="default")
    model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"),
                               gradient_accumulation_steps=2)
    model.set_optimizer(optimizer_cls="AdamW", lr=5e-3)
    model.set_lr_scheduler(scheduler_cls="CosineWarmupScheduler", num_warmup_steps=5,
                           num_training_steps=len(dataloader))

    def settle(result) -> None:
        if role == "ray":
            result.result()  # the step is done on every actor
        elif dist.is_initialized():
            dist.barrier()

    start = None
    for step, batch in enumerate(dataloader):
        if step == warmup:
            settle(last)
            start, cpu_start, system_start = time.perf_counter(), time.process_time(), _ray_system_cpu()
        model.forward_backward(inputs=batch)
        last = model.clip_grad_and_step()
    settle(last)
    elapsed = time.perf_counter() - start
    if twinkle.is_master():
        result = {"role": role, "steps": steps, "seconds_per_step": elapsed / steps,
                  # CPU this process used per step: the driver's share of the cores under Ray, rank 0's under torchrun
                  "process_cpu_per_step": (time.process_time() - cpu_start) / steps,
                  # the Ray daemons this driver started (raylet, GCS, agents) over the same window; 0 under torchrun
                  "ray_daemons_cpu_per_step": (_ray_system_cpu() - system_start) / steps}
        print(MARK + json.dumps(result), flush=True)


def _ray_system_cpu() -> float:
    """CPU seconds used so far by the Ray daemons this driver started (raylet, GCS, agents, monitors): the
    processes descended from this one, minus the actors doing the training. 0 under torchrun (none exist)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return 0.0
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
    me, total = os.getpid(), 0.0
    for pid, (parent, cpu, name) in stats.items():
        chain = parent
        while chain > 1 and chain != me and chain in stats:
            chain = stats[chain][0]
        if chain == me and not name.startswith(b"ray::TwinkleWorker"):
            total += cpu
    return total


def _child(cmd: list[str], timeout: float) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TWINKLE_MODE", "RAY_ADDRESS"):
        env.pop(var, None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line[len(MARK):]) for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not results:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    return results[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed micro-batches (default 30)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed micro-batches first (default 4)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, alternating; best is kept")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per child run")
    parser.add_argument("--role", choices=("local", "ray"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2 or args.steps % 2 or args.warmup % 2:
        parser.error("--steps and --warmup must be even (an optimizer step every 2 micro-batches), steps >= 2")

    if args.role:
        _train(args.role, args.steps, args.warmup, args.batch_size)
        return

    from twinkle.assets import self_cognition_path, tiny_model_path

    tiny_model_path(), self_cognition_path()  # made once here, not raced by the ranks
    knobs = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    me = str(Path(__file__).resolve())
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), me, "--role", "local", *knobs]
    ray_cmd = [sys.executable, me, "--role", "ray", *knobs]
    local_times, ray_times = [], []
    for _ in range(args.repeats):
        local_times.append(_child(torchrun, args.timeout))
        ray_times.append(_child(ray_cmd, args.timeout))
    best_local = min(local_times, key=lambda r: r["seconds_per_step"])
    best_ray = min(ray_times, key=lambda r: r["seconds_per_step"])
    local, ray = best_local["seconds_per_step"], best_ray["seconds_per_step"]
    print(f"steps timed: {args.steps} micro-batches of {args.batch_size} (dp=2, CPU, {os.cpu_count()} cores), "
          f"best of {args.repeats}")
    print(f"torchrun --nproc_per_node 2 (local mode): {local * 1000:8.1f} ms/step  runs: "
          + ", ".join(f"{r['seconds_per_step'] * 1000:.1f}" for r in local_times))
    print(f"ray, 2 CPU actors (ray mode):            {ray * 1000:8.1f} ms/step  runs: "
          + ", ".join(f"{r['seconds_per_step'] * 1000:.1f}" for r in ray_times))
    print(f"  ray driver CPU {best_ray['process_cpu_per_step'] * 1000:.1f} ms/step, Ray daemons CPU "
          f"{best_ray['ray_daemons_cpu_per_step'] * 1000:.1f} ms/step (cores the actors share)")
    print(f"ratio ray / torchrun: {ray / local:.3f}  (goal: <= 1.15)")
    if args.repeats > 1:
        med_local = statistics.median(r["seconds_per_step"] for r in local_times)
        med_ray = statistics.median(r["seconds_per_step"] for r in ray_times)
        ratios = [r["seconds_per_step"] / l["seconds_per_step"] for l, r in zip(local_times, ray_times)]
        print(f"medians: torchrun {med_local * 1000:.1f} ms/step, ray {med_ray * 1000:.1f} ms/step, ratio "
              f"{med_ray / med_local:.3f}; per-round ratios (ray / the torchrun run just before): "
              + ", ".join(f"{x:.3f}" for x in ratios) + f", median {statistics.median(ratios):.3f}")
    try:
        load = os.getloadavg()[0]
        print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores (other work skews both sides)")
    except OSError:
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
