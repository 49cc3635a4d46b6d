"""What the job sandbox costs: bubblewrap against no sandbox, through the worker's own runner, in one run.

1. Start-up: from the runner being handed the attempt (``JobRunner.run()``) to the script's first line, for a
   script whose first line prints the wall clock. ``--rounds`` pairs, alternating which side goes first; the
   headline is the median of the per-pair differences (goal: at most 100 ms more).
2. Training: the example's LoRA step on the tiny model (``bench/train_step.py``'s "ours" side, one torch thread)
   inside and outside the sandbox, alternating; the headline is the median of the per-pair ratios of the median
   step times (goal <= 1.02). ``--clock cpu`` (default) times the process's CPU time, user and system, as
   train_step.py does on the CPU, so other programs on a shared machine do not decide the ratio; ``--clock wall``
   times the wall clock (use it on a quiet machine).

    python bench/sandbox_overhead.py               # both parts
    python bench/sandbox_overhead.py --rounds 20 --train-rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.runner import JobRunner, JobSpec  # noqa: E402 - after the path set-up above
from worker.sandbox import BwrapSandbox, Limits, NoSandbox  # noqa: E402

FIRST_LINE = "import time; print('FIRST', repr(time.time()), flush=True)\n"
TRAIN = textwrap.dedent(
    """
    import argparse, json, time, types
    import train_step
    if "CLOCK" == "wall":
        train_step.time = types.SimpleNamespace(perf_counter=time.perf_counter, process_time=time.perf_counter)
    args = argparse.Namespace(device="cpu", dtype="fp32", preset="tiny", batch=4, seq=64, steps=STEPS, warmup=3,
                              threads=1, grad_ckpt=True, side="ours")
    print("RESULT " + json.dumps(train_step.run_side(args)), flush=True)
    """
)


class Sink:
    def __init__(self):
        self.lines: list[str] = []
        self.first_at: float | None = None

    def send_logs(self, lines):
        for line in lines:
            self.lines.append(line["text"])

    def send_metrics(self, records):
        pass

    def send_artifact(self, path, file):
        pass


def run(sandbox, folder: Path, files: dict[str, str], limits: Limits) -> tuple[float, list[str]]:
    spec = JobSpec.in_folder("bench", 1, folder, "train.py")
    spec.code_dir.mkdir(parents=True)
    for name, text in files.items():
        (spec.code_dir / name).write_text(text)
    sink = Sink()
    t0 = time.time()
    result = JobRunner(spec, sink, flush_interval_s=0.05, sandbox=sandbox, limits=limits).run()
    if result.state != "succeeded":
        raise SystemExit(f"{sandbox.isolation}: the job {result.state}: {result.error}\n" + "\n".join(sink.lines[-20:]))
    shutil.rmtree(folder)
    return t0, sink.lines


def startup(sides: dict, rounds: int, work: Path, limits: Limits) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            t0, lines = run(sides[name], work / f"s{r}{name}", {"train.py": FIRST_LINE}, limits)
            first = float(next(line.split()[1] for line in lines if line.startswith("FIRST")))
            out[name].append(first - t0)
    return out


def training(sides: dict, rounds: int, steps: int, clock: str, work: Path, limits: Limits) -> dict[str, list[float]]:
    files = {
        "train.py": TRAIN.replace("STEPS", str(steps)).replace("CLOCK", clock),
        "train_step.py": (ROOT / "bench" / "train_step.py").read_text(),
    }
    out: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            _, lines = run(sides[name], work / f"t{r}{name}", files, limits)
            result = json.loads(next(line for line in lines if line.startswith("RESULT"))[7:])
            out[name].append(result["median_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="start-up pairs")
    parser.add_argument("--train-rounds", type=int, default=3, help="training pairs")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per run")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()

    limits = Limits(pids=4096, disk_bytes=10 << 30, memory_bytes=8 << 30)  # the watcher runs, as on a worker
    bwrap = BwrapSandbox()
    sides = {"none": NoSandbox(), "bwrap": bwrap}
    print(f"sandbox overhead: {bwrap.version}, cgroups: {bool(bwrap.cgroups)}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        work = Path(tmp)
        run(bwrap, work / "warm", {"train.py": FIRST_LINE}, limits)  # the one-time probe of the Python's paths
        s = startup(sides, args.rounds, work, limits)
        diffs = [b - n for n, b in zip(s["none"], s["bwrap"], strict=True)]
        med = statistics.median(diffs)
        none_ms, bwrap_ms = statistics.median(s["none"]) * 1000, statistics.median(s["bwrap"]) * 1000
        print(f"start-up to the first line, median of {args.rounds}: none {none_ms:.0f} ms, bwrap {bwrap_ms:.0f} ms")
        verdict = "met" if med <= 0.1 else "NOT met"
        print(f"  bwrap - none, median of pairs: {med * 1000:+.0f} ms (goal <= +100 ms: {verdict})")
        if args.skip_train:
            return
        t = training(sides, args.train_rounds, args.steps, args.clock, work, limits)
        ratios = [b / n for n, b in zip(t["none"], t["bwrap"], strict=True)]
        ratio = statistics.median(ratios)
        print(f"training step (tiny model, LoRA, 1 thread, {args.clock} clock), median s/step per run: "
              f"none {[round(x, 4) for x in t['none']]}, bwrap {[round(x, 4) for x in t['bwrap']]}")
        print(f"  bwrap / none, median of pairs: {ratio:.3f} (goal <= 1.02: {'met' if ratio <= 1.02 else 'NOT met'})")


if __name__ == "__main__":
    main()
