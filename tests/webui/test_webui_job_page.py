"""A job's page, the compare page and every page's screenshots, against the real API (``twinkle-scheduler
serve`` + ``dispatch``, Redis, S3) in headless Chromium.

The jobs are run by an in-process worker speaking the worker API over HTTP (``scheduler.testing``): it registers
with a device type of its own (so it takes only this module's jobs), starts the job the dispatcher gave it, and
posts the log lines, metrics, checkpoint files and end report a real worker would. That gives exact, repeatable
metric values, stderr lines and failures to assert on; ``test_webui_flow`` covers a real ``twinkle-worker``.
"""

from __future__ import annotations

import csv
import re
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from playwright.sync_api import expect
from webui_testkit import ARTIFACTS, shot, sign_in

from scheduler.testing.factories import InProcessWorker

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}
T0 = 1_700_000_000.0


def _script(device_type: str) -> str:
    return (
        "from twinkle.infra import DeviceGroup\n\n"
        f"device_group = [DeviceGroup(name='g', ranks=1, device_type={device_type!r})]\n"
        "print('training')\n"
    )


def _records(scale: float = 1.0, steps: int = 30) -> list[dict]:
    out = []
    for s in range(1, steps + 1):
        loss = scale * 3 / (1 + s / 6)
        out.append({"step": s, "ts": T0 + 2 * s, "metrics": {
            "loss": f"{loss:.4f}", "lr": f"{1e-4 * min(1, s / 5):.2e}", "grad_norm": f"{(40.0 if s == 17 else 1 / (1 + s / 9)):.4f}",
            "accuracy": f"{min(99.0, 40 + 2 * s):.1f}%", "tokens_per_second": f"{1200 + 10 * s}",
        }})
        out.append({"step": s, "ts": T0 + 2 * s + 1, "metrics": {"sys/cpu_percent": f"{80 + s % 7}", "sys/rss_bytes": str(400_000_000 + s * 1_000_000)}})
    return out


@dataclass
class Runner:
    """Submits jobs only this module's in-process worker can run, and plays the worker's side for them.

    A thread heartbeats for the worker (as the daemon does), listing the jobs it has started and not finished.
    """

    stack: object
    http: httpx.Client
    worker: InProcessWorker
    device_type: str
    token: str
    running: set = field(default_factory=set)

    def submit(self, name: str, script: str | None = None) -> str:
        with self.stack.client(self.token) as c:  # type: ignore[attr-defined]
            r = c.post("/jobs", data={"name": name}, files={"file": ("train.py", (script or _script(self.device_type)).encode(), "text/x-python")})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def start(self, name: str) -> str:
        """A job of ``name``, assigned to our worker and started."""
        jid = self.submit(name)
        self.stack.wait_job(jid, {"assigned"}, timeout=30)  # type: ignore[attr-defined]
        assert self.worker.start(jid, 1).status_code == 200
        self.running.add(jid)
        return jid

    def finish(self, jid: str, state: str, exit_code: int | None) -> None:
        r = self.worker.finish(jid, 1, state=state, exit_code=exit_code)
        assert r.status_code == 200, r.text
        self.running.discard(jid)

    def run(self, name: str, *, records: list[dict] | None = None, stdout: tuple[str, ...] = (), stderr: tuple[str, ...] = (),
            files: dict[str, bytes] | None = None, state: str = "succeeded", exit_code: int | None = 0) -> str:
        jid = self.start(name)
        if stdout:
            assert self.worker.logs(jid, 1, *stdout).status_code in (200, 204)
        if stderr:
            assert self.worker.logs(jid, 1, *stderr, stream="stderr").status_code in (200, 204)
        if records:
            assert self.worker.metrics(jid, 1, records).status_code in (200, 204)
        for path, data in (files or {}).items():
            r = self.worker.artifact(jid, 1, path, data)
            assert r.status_code in (200, 201, 204), r.text
        self.finish(jid, state, exit_code)
        self.stack.wait_job(jid, {state}, timeout=30)  # type: ignore[attr-defined]
        return jid


@pytest.fixture(scope="module")
def runner(stack) -> Iterator[Runner]:
    device_type = f"uiweb-{uuid.uuid4().hex[:6]}"
    http = httpx.Client(base_url=stack.url, timeout=30)
    worker = InProcessWorker(http, stack.worker_token, f"box-{device_type}", [
        {"name": "g", "ranks": 4, "device_type": device_type, "device_model": None, "memory_gb": None}
    ], isolation="bwrap")
    worker.register()
    runner = Runner(stack, http, worker, device_type, stack.user_token)
    beats = httpx.Client(base_url=stack.url, timeout=30)
    beater = InProcessWorker(beats, stack.worker_token, worker.name, worker.device_groups)
    beater.worker_id = worker.worker_id
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.4):
            beater.heartbeat([(j, 1) for j in list(runner.running)])

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(5)
        beats.close()
        http.close()


def _order(page, *selectors: str) -> list[float]:
    return [page.locator(s).first.bounding_box()["y"] for s in selectors]


# ---------------------------------------------------------------- failure first


def test_a_failed_jobs_page_leads_with_the_reason_and_marks_stderr(page, stack, runner):
    jid = runner.run(
        "crashes", records=_records(steps=3),
        stdout=("loading model", "step 1 loss=2.5"),
        stderr=("Traceback (most recent call last):", '  File "train.py", line 9, in <module>', "RuntimeError: CUDA out of memory"),
        state="failed", exit_code=1,
    )
    sign_in(page, stack)
    page.goto(f"{stack.url}/jobs/{jid}")
    failure = page.locator("#failure")
    expect(failure).to_be_visible()
    expect(page.locator("#failure-summary")).to_have_text("exit code 1")
    expect(page.locator("#failure-stderr")).to_contain_text("RuntimeError: CUDA out of memory")
    # Above everything else: the summary, the charts and the log come after it.
    y_failure, y_summary, y_charts, y_log = _order(page, "#failure", "#job-summary", "#metrics-h", "#log")
    assert y_failure < y_summary < y_charts < y_log
    # In the log, the stderr lines are marked and the stdout ones are not.
    log = page.locator("#log")
    expect(log.locator(".log-stderr")).to_have_count(3, timeout=15_000)
    expect(log.locator(".log-stderr").last).to_contain_text("CUDA out of memory")
    expect(log.locator(".log-line", has_text="step 1 loss=2.5")).not_to_have_class(re.compile("log-stderr"))
    shot(page, "job-failed")


# ---------------------------------------------------------------- charts, system use, export


def test_every_metric_is_charted_with_system_use_and_exports_as_csv(page, stack, runner, tmp_path):
    records = _records()
    jid = runner.run("charted", records=records)
    sign_in(page, stack)
    page.evaluate("localStorage.clear()")
    page.goto(f"{stack.url}/jobs/{jid}")
    for cid in ["chart-loss", "chart-lr", "chart-grad-norm", "chart-accuracy", "chart-tokens-per-second"]:
        expect(page.locator(f"#charts #{cid}")).to_have_attribute("data-points", "30")
    expect(page.get_by_role("heading", name="System use")).to_be_visible()
    expect(page.locator("#sys-charts #chart-sys-cpu-percent")).to_have_attribute("data-points", "30")
    expect(page.locator("#sys-charts #chart-sys-rss-bytes .chart-label").last).to_have_text("Time since start")
    # "75.0%"-style values chart as numbers: step 10 is 60%.
    acc = page.locator("#chart-accuracy")
    acc.scroll_into_view_if_needed()
    box = acc.locator("rect.chart-hit").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 9 / 29, box["y"] + box["height"] / 2)
    expect(acc.locator(".chart-tooltip-value")).to_have_text("60")
    # The grad-norm spike at step 17 is marked, not allowed to flatten the chart.
    expect(page.locator("#chart-grad-norm")).to_have_attribute("data-outliers", "1")
    shot(page, "job-charts")

    with page.expect_download() as info:
        page.locator("[data-export='text/csv']").click()
    saved = tmp_path / "metrics.csv"
    info.value.save_as(saved)
    rows = list(csv.DictReader(saved.open()))
    assert len(rows) == len(records)
    assert [r["loss"] for r in rows if r["loss"]] == [r["metrics"]["loss"] for r in records if "loss" in r["metrics"]]


def test_compare_overlays_the_selected_jobs(page, stack, runner):
    a = runner.run("compare-a", records=_records(1.0, steps=12))
    b = runner.run("compare-b", records=_records(1.4, steps=12))
    sign_in(page, stack)
    page.evaluate("localStorage.clear(); sessionStorage.clear()")
    page.goto(f"{stack.url}/")
    for jid in (a, b):
        page.locator(f"#jobs-table tr[data-job-id='{jid}'] .compare-box").check()
    compare = page.locator("#compare-selected")
    expect(compare).to_have_text("Compare selected (2)")
    compare.click()
    page.wait_for_url(re.compile(r"/compare\?jobs="))
    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
    loss = page.locator("#chart-loss")
    expect(loss).to_have_attribute("data-series", "2")
    expect(loss.locator("path.chart-line")).to_have_count(2)
    expect(page.locator("#compare-runs li")).to_have_count(2)
    expect(loss.locator(".chart-legend li")).to_have_text(["compare-a", "compare-b"])
    shot(page, "compare")


# ---------------------------------------------------------------- resubmit


def test_edit_and_resubmit_runs_the_same_code_with_new_settings(page, stack, runner):
    jid = runner.run("original", records=_records(steps=2))
    sign_in(page, stack)
    page.goto(f"{stack.url}/jobs/{jid}")
    page.get_by_role("button", name="Edit and resubmit").click()
    dialog = page.get_by_role("dialog", name="Edit and resubmit")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Group name")).to_have_value("g")

    # A variable the platform sets is refused by the API, beside the field, and no job is made.
    dialog.get_by_label("Environment variables").fill("TWINKLE_OUTPUT_DIR=/tmp/x")
    dialog.get_by_role("button", name="Submit as a new job").click()
    expect(dialog.locator("#rs-env-error")).to_contain_text("TWINKLE_OUTPUT_DIR")
    expect(dialog.get_by_label("Environment variables")).to_have_attribute("aria-invalid", "true")
    shot(page, "job-resubmit-error")

    dialog.get_by_label("Job name").fill("longer run")
    dialog.get_by_label("Environment variables").fill("EPOCHS=3\nLR=1e-3")
    dialog.get_by_label("Arguments").fill("--epochs\n3\n--note\ntwo words")
    dialog.get_by_label("Ranks").fill("2")
    dialog.get_by_role("button", name="Submit as a new job").click()
    page.wait_for_url(re.compile(r"/jobs/(?!" + jid + r")[^/]+$"))
    new_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", name="longer run")).to_be_visible()
    expect(page.locator("#job-summary")).to_contain_text("EPOCHS=3")
    with stack.client() as c:
        job = c.get(f"/jobs/{new_id}").json()
    assert job["env"] == {"EPOCHS": "3", "LR": "1e-3"}
    assert job["args"] == ["--epochs", "3", "--note", "two words"]
    assert job["resubmitted_from"] == jid
    assert [(g["name"], g["ranks"]) for g in job["request"]["device_groups"]] == [("g", 2)]
    with stack.client() as c:
        c.post(f"/jobs/{new_id}/cancel")


def test_resubmit_as_is_makes_a_new_job_with_the_same_settings(page, stack, runner):
    jid = runner.run("same-again")
    sign_in(page, stack)
    page.goto(f"{stack.url}/jobs/{jid}")
    page.get_by_role("button", name="Resubmit", exact=True).click()
    page.wait_for_url(re.compile(r"/jobs/(?!" + jid + r")[^/]+$"))
    with stack.client() as c:
        job = c.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()
        c.post(f"/jobs/{job['id']}/cancel")
    assert job["name"] == "same-again" and job["resubmitted_from"] == jid


# ---------------------------------------------------------------- queue and cancel


def test_a_held_job_says_held_and_opens_no_live_log(page, stack, runner):
    jid = runner.submit("held", _script("nobody-offers-this"))
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/logs/stream" in r.url else None)
    sign_in(page, stack)
    page.goto(f"{stack.url}/jobs/{jid}")
    expect(page.locator(".title-row .badge")).to_have_text("Held")
    expect(page.locator("#log-status")).to_contain_text("Held")
    expect(page.locator("#job-summary .queue-held")).to_be_visible()
    expect(page.locator("#log-status .live")).to_have_count(0)
    assert streams == []
    shot(page, "job-held")
    with stack.client() as c:
        c.post(f"/jobs/{jid}/cancel")


def test_cancel_shows_stopping_until_the_worker_has_stopped_it(page, stack, runner):
    jid = runner.start("to-stop")
    sign_in(page, stack)
    page.goto(f"{stack.url}/jobs/{jid}")
    expect(page.locator(".title-row .badge")).to_have_text("Running")
    page.get_by_role("button", name="Cancel job").click()
    page.get_by_role("dialog", name="Cancel this job?").get_by_role("button", name="Cancel job").click()
    expect(page.locator(".title-row .badge")).to_have_text("Stopping…")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    shot(page, "job-stopping")
    # The worker reports the end; the page follows.
    runner.finish(jid, "cancelled", -15)
    expect(page.locator(".title-row .badge")).to_have_text("Cancelled", timeout=15_000)


# ---------------------------------------------------------------- checkpoints


def test_a_checkpoint_folder_downloads_as_one_zip_and_fits_a_phone(page, stack, runner, tmp_path):
    files = {
        "output/last-checkpoint/adapter_model.safetensors": b"weights" * 500,
        "output/last-checkpoint/adapter_config.json": b'{"r": 8}',
        "output/logs/events.out": b"tb",
    }
    jid = runner.run("with-checkpoint", files=files)
    page.set_viewport_size(PHONE)
    sign_in(page, stack)
    page.goto(f"{stack.url}/jobs/{jid}")
    link = page.get_by_role("link", name="Download output/last-checkpoint (zip)")
    expect(link).to_be_visible()
    box = link.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    for file_link in page.locator("#artifacts-table a").all():
        b = file_link.bounding_box()
        assert b["x"] + b["width"] <= PHONE["width"], b  # every download link on screen, no sideways scroll
    shot(page, "job-checkpoints-phone")
    with page.expect_download() as info:
        link.click()
    saved = tmp_path / "ckpt.zip"
    info.value.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        names = sorted(zf.namelist())
        assert all(n.endswith(("adapter_model.safetensors", "adapter_config.json")) for n in names), names
        assert len(names) == 2
        weights = next(n for n in names if n.endswith("safetensors"))
        assert zf.read(weights) == files["output/last-checkpoint/adapter_model.safetensors"]


# ---------------------------------------------------------------- every page, both sizes, both schemes


def test_unknown_paths_show_the_uis_not_found_page(page, stack):
    sign_in(page, stack)
    page.goto(f"{stack.url}/jobs/abc/extra")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page.get_by_role("link", name="Go to your jobs")).to_be_visible()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_screenshots_of_every_page(chromium, stack, runner, size, scheme):
    """Every page at 1440x900 and 390x844 in light and dark: saved for review; each page renders its heading,
    and on a phone nothing but the tables (which scroll, with a cue) is wider than the screen."""
    global _jobs
    if not _jobs:
        _jobs = {
            "failed": runner.run("shot-failed", records=_records(steps=8), stdout=("step 1",), stderr=("ValueError: bad batch",), state="failed", exit_code=1),
            "ok": runner.run("shot-succeeded", records=_records(), stdout=("step 1", "saved output/last-checkpoint"),
                             files={"output/last-checkpoint/adapter_model.safetensors": b"w" * 100}),
            "other": runner.run("shot-other", records=_records(1.3)),
        }
    viewport = DESKTOP if size == "desktop" else PHONE
    context = chromium.new_context(viewport=viewport, color_scheme=scheme, accept_downloads=True)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        pg.goto(f"{stack.url}/login")
        expect(pg.get_by_role("heading", name="Sign in")).to_be_visible()
        _shot(pg, f"page-login-{size}-{scheme}")
        sign_in(pg, stack)
        pages = [
            ("jobs", "/", "My jobs"),
            ("submit", "/submit", "Submit a job"),
            ("workers", "/workers", "Workers"),
            ("job-failed", f"/jobs/{_jobs['failed']}", "shot-failed"),
            ("job-succeeded", f"/jobs/{_jobs['ok']}", "shot-succeeded"),
            ("compare", f"/compare?jobs={_jobs['ok']},{_jobs['other']},{_jobs['failed']}", "Compare runs"),
            ("not-found", "/no/such/page", "Page not found"),
        ]
        for name, path, heading in pages:
            pg.goto(f"{stack.url}{path}")
            expect(pg.get_by_role("heading", name=heading, exact=True)).to_be_visible()
            if name.startswith("job-") or name == "compare":
                expect(pg.locator("#chart-loss path.chart-line").first).to_be_visible()
            overflow = pg.evaluate(
                """() => [...document.querySelectorAll('main *')]
                    .filter((el) => !el.closest('.table-scroll, .log, .chart-plot, dialog, details:not([open])'))
                    .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
                    .map((el) => el.tagName + '#' + el.id + '.' + el.className)"""
            )
            assert overflow == [], (name, overflow)
            _shot(pg, f"page-{name}-{size}-{scheme}")
        if size == "phone":
            # The jobs table is wider than a phone: it scrolls, and says so.
            pg.goto(f"{stack.url}/")
            scroller = pg.locator(".table-scroll").first
            expect(scroller).to_have_attribute("data-overflow", "right")
            scroller.evaluate("el => { el.scrollLeft = el.scrollWidth; }")
            expect(scroller).to_have_attribute("data-overflow", "left")
    finally:
        context.close()
    assert not errors, errors


_jobs: dict[str, str] = {}


def _shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    time.sleep(0.1)  # let the last frame paint; the assertions above already waited for the content
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
