"""The whole journey in a real browser against the real platform: API, dispatcher, a ``twinkle-worker`` child
process running the jobs, Redis. Sign in, submit, watch a job run (log tail, loss chart), cancel another,
download a checkpoint, see the donor on the workers page.

The training job is ``examples/self_cognition.py`` on the tiny real model once the twinkle modules it imports
exist, else a small script that writes metrics in the twinkle metrics-file format and saves a checkpoint folder.
The platform passes no environment through to a job, so the example gets its size knobs from two lines put at
its top (fewer rows, metrics every 5 micro-batches): half the CPU time, and more points on the chart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect
from webui_testkit import ROOT, shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

EXAMPLE = ROOT / "examples" / "self_cognition.py"
WORKER = "grace-cpu"

# Prints a line every 0.2 s for up to a minute: long enough to see it run and cancel it.
LONG_SCRIPT = """\
import time

for i in range(300):
    print(f"tick {i}", flush=True)
    time.sleep(0.2)
"""

# Stands in for the example: the same outputs (metrics file records, a checkpoint folder) in a few seconds.
METRICS_SCRIPT = """\
import json, os, pathlib, time

metrics_file = os.environ.get("TWINKLE_METRICS_FILE")
out = pathlib.Path(os.environ.get("TWINKLE_OUTPUT_DIR", "output"))
for step in range(1, 13):
    loss, lr, grad_norm = 2.5 / step, 1e-4 * min(1.0, step / 5), 1.0 / (1 + step / 4)
    print(f"step {step} loss={loss:.4f} lr={lr:.2e} grad_norm={grad_norm:.3f}", flush=True)
    if metrics_file:
        with open(metrics_file, "a") as f:
            record = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "grad_norm": f"{grad_norm:.4f}"}
            f.write(json.dumps({"step": step, "ts": time.time(), "metrics": record}) + "\\n")
    time.sleep(0.4)
ckpt = out / "last-checkpoint"
ckpt.mkdir(parents=True, exist_ok=True)
(ckpt / "adapter_model.safetensors").write_bytes(b"twinkle-checkpoint-" * 1000)
(ckpt / "adapter_config.json").write_text(json.dumps({"r": 8}))
print("saved", ckpt, flush=True)
"""


def _example_ready() -> bool:
    """The example exists and every twinkle module it imports does too (it lands while others still write them)."""
    import ast
    import importlib.util

    if not EXAMPLE.exists():
        return False
    modules = set()
    for node in ast.walk(ast.parse(EXAMPLE.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules if m.split(".")[0] == "twinkle")
    except ModuleNotFoundError:
        return False


USE_EXAMPLE = _example_ready()
EXAMPLE_KNOBS = 'import os\nos.environ.setdefault("DATA_ROWS", "160")\nos.environ.setdefault("LOG_EVERY", "5")\n'


def _with_knobs(source: str) -> str:
    """``source`` with EXAMPLE_KNOBS after its ``from __future__`` imports (which must stay first)."""
    import ast

    lines = source.splitlines(keepends=True)
    after = max(
        (n.end_lineno for n in ast.parse(source).body if isinstance(n, ast.ImportFrom) and n.module == "__future__"),
        default=0,
    )
    return "".join(lines[:after]) + EXAMPLE_KNOBS + "".join(lines[after:])


@pytest.fixture(scope="module")
def worker(stack, tiny_model_dir):
    return stack.start_worker(WORKER, assets_dir=str(Path(tiny_model_dir).parent))


def _title_badge(page):
    return page.locator(".title-row .badge")


def test_submit_watch_cancel_download(page, stack, worker, tmp_path):
    sign_in(page, stack)

    # ---- a long job, cancelled from its page while it runs
    page.goto(f"{stack.url}/submit")
    page.get_by_label("Paste code").check()
    page.get_by_label("Code", exact=True).fill(LONG_SCRIPT)
    page.get_by_label("Job name (optional)").fill("long-run")
    expect(page.locator("#inspect-status")).to_contain_text("no DeviceGroup")  # the API warns, then defaults
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[^/]+$"))
    long_id = page.url.rsplit("/", 1)[1]
    expect(_title_badge(page)).to_have_text("Running", timeout=60_000)
    expect(page.locator("#log")).to_contain_text("tick 3", timeout=30_000)
    expect(page.locator("#log-status")).to_have_text("Live")
    shot(page, "flow-long-running")

    page.get_by_role("button", name="Cancel job").click()
    dialog = page.get_by_role("dialog", name="Cancel this job?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel job").click()
    expect(_title_badge(page)).to_have_text("Cancelled", timeout=30_000)
    expect(page.locator("#attempts-table tbody tr").first).to_contain_text("Cancelled")
    expect(page.locator("#attempts-table tbody tr").first).to_contain_text(WORKER)
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    shot(page, "flow-cancelled")

    # ---- the training job: upload the script, watch it run to the end
    script = tmp_path / "self_cognition.py"
    script.write_text(_with_knobs(EXAMPLE.read_text()) if USE_EXAMPLE else METRICS_SCRIPT)
    page.goto(f"{stack.url}/submit")
    page.set_input_files("#file", str(script))
    expect(page.locator("#inspect-status")).to_contain_text("self_cognition.py")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[^/]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    assert job_id != long_id
    expect(_title_badge(page)).to_have_text(re.compile("Running|Succeeded|Failed"), timeout=60_000)
    loss_chart = page.locator("#chart-loss")
    # The loss line draws while the job runs (or, for a very fast job, as soon as it has ended).
    expect(loss_chart.locator("path.chart-line").or_(page.locator(".title-row .badge-failed"))).to_have_count(
        1, timeout=600_000
    )
    assert _title_badge(page).inner_text() != "Failed", page.locator("#log").inner_text()[-3000:]
    expect(page.locator("#log")).not_to_be_empty()
    shot(page, "flow-training")
    expect(_title_badge(page)).to_have_text(re.compile("Succeeded|Failed"), timeout=600_000)
    assert _title_badge(page).inner_text() == "Succeeded", page.locator("#log").inner_text()[-3000:]
    expect(page.locator("#log-status")).to_contain_text("ended", timeout=30_000)

    with stack.client() as c:
        records = c.get(f"/jobs/{job_id}/metrics").json()["records"]
        artifacts = c.get(f"/jobs/{job_id}/artifacts").json()["items"]
        full_log = c.get(f"/jobs/{job_id}/logs").text
    loss_steps = {r["step"] for r in records if "loss" in r["metrics"]}
    assert loss_steps, records
    expect(loss_chart).to_have_attribute("data-points", str(len(loss_steps)), timeout=15_000)
    # The worker sampled the job's processes: system use is charted in its own group, against time.
    sys_steps = [r for r in records if "sys/cpu_percent" in r["metrics"]]
    assert sys_steps, "the worker posted no sys/ samples"
    cpu = page.locator("#sys-charts #chart-sys-cpu-percent")
    expect(cpu).to_have_attribute("data-points", str(len(sys_steps)), timeout=15_000)
    expect(cpu.locator("text.chart-label").last).to_have_text("Time since start")
    # The live tail shows what the stored log holds (its last line at least).
    last_line = [line for line in full_log.splitlines() if line.strip()][-1]
    expect(page.locator("#log")).to_contain_text(last_line.strip())

    # ---- download a checkpoint file through its link
    weights = next(a for a in artifacts if a["path"].endswith("adapter_model.safetensors"))
    row = page.locator("#artifacts-table tbody tr", has_text=weights["path"])
    expect(row).to_have_count(1)
    with page.expect_download() as info:
        row.get_by_role("link", name=re.compile("Download")).click()
    assert info.value.url.startswith(weights["url"].split("?")[0])  # the presigned S3 link itself
    saved = tmp_path / "downloaded.safetensors"
    info.value.save_as(saved)
    assert saved.stat().st_size == weights["size"]
    if not USE_EXAMPLE:
        assert saved.read_bytes() == b"twinkle-checkpoint-" * 1000
    shot(page, "flow-succeeded")

    # ---- both jobs on the list, with the worker's name
    page.goto(f"{stack.url}/")
    for jid, state in [(job_id, "Succeeded"), (long_id, "Cancelled")]:
        row = page.locator(f"#jobs-table tbody tr[data-job-id='{jid}']")
        expect(row).to_contain_text(state)
        expect(row).to_contain_text(WORKER)
    shot(page, "flow-job-list")


def test_the_workers_page_shows_the_donor(page, stack, worker):
    sign_in(page, stack)
    page.goto(f"{stack.url}/workers")
    row = page.locator("#workers-table tbody tr", has_text=WORKER)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("grace")  # the worker token's owner
    expect(row).to_contain_text("1 × cpu")
    expect(row.locator(".badge")).to_have_text("Live")
    expect(row.locator("time")).to_have_text(re.compile(r"now|seconds? ago"))
    with stack.client() as c:
        listed = next(w for w in c.get("/workers").json()["items"] if w["name"] == WORKER)
    cells = row.locator("td.num")
    expect(cells.nth(0)).to_have_text(str(listed["jobs_run"]))
    shot(page, "workers")
