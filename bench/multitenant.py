"""What multi-tenancy costs: one twinkle-server with 4 tenants against 1, and a client step against in-process.

Measured in one run, all on the same model, batch and machine:

1. resident memory of the server process with 4 tenants trained / with 1 tenant trained (goal <= 1.3; four
   separate processes would be 4.0). Also printed: the server before any tenant (the slots are pre-built, so most
   of a tenant's memory is paid at start; the growth per tenant is its optimizer state and gradients).
2. aggregate trained tokens/s of 4 tenants training concurrently (4 client threads, 4 keys) / 1 tenant alone
   (goal >= 1.0 on the CPU: the server runs one step at a time, so this measures that interleaving costs nothing).
3. per-step time of a client step (forward_backward + clip_grad_and_step through ``twinkle_client``, median) / the
   same step on a ``MultiLoraTransformersModel`` in this process (goal <= 1.2 on the tiny model). Also the CPU
   time of a client step (server process + client process) / the in-process step's: on a machine shared with
   other work, wall-clock ratios are noise while CPU time is not.

    python bench/multitenant.py                          # CPU, the bundled tiny model
    python bench/multitenant.py --preset 0.5b --device cuda   # a Qwen2.5-0.5B-shaped random model (GPU machine)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import requests

LORA = json.dumps({"r": 8, "lora_alpha": 32, "target_modules": "all-linear", "_TWINKLE_TYPE_": "LoraConfig"})


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_model_dir(preset: str) -> str:
    from twinkle.assets import tiny_model_path

    if preset == "tiny":
        return str(tiny_model_path())
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_step import PRESETS

    folder = tempfile.mkdtemp(prefix=f"twinkle-bench-{preset}-")
    Qwen2ForCausalLM(Qwen2Config(**PRESETS[preset])).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_model_path())).save_pretrained(folder)
    return folder


def batch(rows: int, seq: int, seed: int) -> list[dict]:
    import random

    rnd = random.Random(seed)
    out = []
    for _ in range(rows):
        ids = [rnd.randrange(3, 200) for _ in range(seq)]
        out.append({"input_ids": ids, "labels": [-100] * 4 + ids[5:] + [-100]})
    return out


class Tenant:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.h = {"Authorization": f"Bearer {token}", "x-request-id": token}
        r = self.http.post(f"{url}/api/v1/twinkle/create_session", json={}, headers=self.h)
        r.raise_for_status()
        self.h["X-Twinkle-Session-Id"] = r.json()["session_id"]

    def call(self, route: str, **body):
        r = self.http.post(f"{self.url}/api/v1/model/bench/twinkle/{route}", json=body, headers=self.h, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"{route}: {r.status_code} {r.text}")
        return r.json()

    def add(self) -> None:
        self.call("add_adapter_to_model", adapter_name="default", config=LORA)
        self.call("set_optimizer", adapter_name="default", optimizer_cls="AdamW", lr=1e-4)

    def step(self, rows) -> None:
        self.call("forward_backward", adapter_name="default", inputs=rows)
        self.call("clip_grad_and_step", adapter_name="default")


def timed_steps(tenant: Tenant, rows, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        tenant.step(rows)
        times.append(time.perf_counter() - t0)
    return times


class ClientTenant:
    """The real client: ``twinkle_client``'s ``MultiLoraTransformersModel`` (one per bench process)."""

    def __init__(self, url: str) -> None:
        from peft import LoraConfig

        from twinkle_client import init_twinkle_client
        from twinkle_client.model import MultiLoraTransformersModel

        init_twinkle_client(url, api_key="tenant-client")
        self.model = MultiLoraTransformersModel("bench")
        self.model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
        self.model.set_optimizer(optimizer_cls="AdamW", lr=1e-4)

    def step(self, rows) -> float:
        t0 = time.perf_counter()
        self.model.forward_backward(inputs=rows)
        self.model.clip_grad_and_step()
        return time.perf_counter() - t0


class InProcess:
    """The same step on a ``MultiLoraTransformersModel`` in this process (the baseline of ratio 3)."""

    def __init__(self, model_dir: str, device: str) -> None:
        from peft import LoraConfig

        from twinkle.model import MultiLoraTransformersModel

        self.device = device
        self.model = MultiLoraTransformersModel(model_id=model_dir, max_loras=4, max_length=1 << 20)
        self.model.add_adapter_to_model("default", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
        self.model.set_optimizer("AdamW", adapter_name="default", lr=1e-4)

    def step(self, rows) -> float:
        import torch

        t0 = time.perf_counter()
        self.model.forward_backward(inputs=rows, adapter_name="default")
        self.model.clip_grad_and_step(adapter_name="default")
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "0.5b"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike")
    args = parser.parse_args()

    model_dir = make_model_dir(args.preset)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    save = tempfile.mkdtemp(prefix="twinkle-bench-ckpt-")
    env = os.environ | {"TWINKLE_DEFAULT_SAVE_DIR": save, "OMP_NUM_THREADS": str(args.threads)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    server = subprocess.Popen(
        [sys.executable, "-m", "twinkle.server", "--model", model_dir, "--name", "bench", "--port", str(port),
         "--max-loras", "4", "--no-sampler", "--max-length", str(1 << 20)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            try:
                if requests.get(f"{url}/api/v1/twinkle/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        rows = batch(args.rows, args.seq, 0)
        tokens = args.rows * args.seq
        rss_empty = rss_mb(server.pid)

        # rounds alternate (1 tenant alone, then 4 at once; a client step, then the in-process step) so that a
        # busy machine slows both sides of each ratio alike; medians over the rounds
        first = Tenant(url, "tenant-0")
        first.add()
        timed_steps(first, rows, 2)  # warm-up
        rss_1 = rss_mb(server.pid)
        others = [Tenant(url, f"tenant-{i}") for i in range(1, 4)]
        for t in others:
            t.add()
            timed_steps(t, rows, 2)
        rss_4 = rss_mb(server.pid)
        everyone = [first, *others]
        tps_1, tps_4 = [], []
        for _ in range(args.rounds):
            alone = timed_steps(first, rows, args.steps)
            tps_1.append(tokens * len(alone) / sum(alone))
            threads = [threading.Thread(target=timed_steps, args=(t, rows, args.steps)) for t in everyone]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            tps_4.append(tokens * args.steps * 4 / (time.perf_counter() - t0))
        import torch

        torch.set_num_threads(args.threads)
        for t in everyone:
            t.call("remove_adapter", adapter_name="default")  # the client's step then has the server to itself
        client = ClientTenant(url)
        client.step(rows)
        local = InProcess(model_dir, args.device)
        local.step(rows)
        client_times, local_times = [], []
        client_cpu = local_cpu = 0.0
        for _ in range(args.steps * args.rounds):
            s0, c0 = cpu_s(server.pid), time.process_time()
            client_times.append(client.step(rows))
            client_cpu += cpu_s(server.pid) - s0 + time.process_time() - c0
            c0 = time.process_time()
            local_times.append(local.step(rows))
            local_cpu += time.process_time() - c0
        tps_1, tps_4 = statistics.median(tps_1), statistics.median(tps_4)
        client_step, local_step = statistics.median(client_times), statistics.median(local_times)
    finally:
        server.terminate()
        server.wait(timeout=60)

    result = {
        "model": args.preset, "device": args.device, "batch": f"{args.rows}x{args.seq}", "steps": args.steps,
        "rounds": args.rounds,
        "rss_mb": {"empty": round(rss_empty), "1_tenant": round(rss_1), "4_tenants": round(rss_4)},
        "rss_note": "the server process after each tenant's first 2 steps (optimizer state allocated)",
        "tokens_per_s": {"1_tenant": round(tps_1, 1), "4_tenants": round(tps_4, 1)},
        "step_s": {"client": round(client_step, 4), "in_process": round(local_step, 4)},
        "step_cpu_s": {"client_and_server": round(client_cpu / len(client_times), 4),
                       "in_process": round(local_cpu / len(local_times), 4)},
        "ratios": {
            "rss_4_over_1": round(rss_4 / rss_1, 3),
            "tokens_per_s_4_over_1": round(tps_4 / tps_1, 3),
            "client_over_in_process": round(client_step / local_step, 3),
            "client_over_in_process_cpu": round(client_cpu / local_cpu, 3),
        },
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
