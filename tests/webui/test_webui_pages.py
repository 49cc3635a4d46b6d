"""The pages against the real API (``twinkle-scheduler serve`` + ``dispatch``, Redis, S3), in headless Chromium.

No worker runs here, so submitted jobs stay queued: that is what the queue and pagination tests need.
Each test that counts jobs signs in as a user of its own.
"""

from __future__ import annotations

import io
import re
import uuid
import zipfile

import pytest
from playwright.sync_api import expect
from webui_testkit import shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SCRIPT = """\
from twinkle.infra import DeviceGroup

device_group = [DeviceGroup(name='actors', ranks=2, device_type='cpu')]
print('hello')
"""


def _user(stack) -> str:
    return stack.new_user(f"u-{uuid.uuid4().hex[:8]}")


def _jobs(stack, token) -> dict:
    with stack.client(token) as c:
        r = c.get("/jobs")
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- sign in / out


def test_a_wrong_token_shows_an_error_beside_the_field(page, stack):
    page.goto(f"{stack.url}/login")
    page.get_by_label("API token").fill("twk_u_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    error = page.locator("#token-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("not accepted")
    expect(page.get_by_label("API token")).to_have_attribute("aria-invalid", "true")
    assert page.url.endswith("/login")
    assert not [c for c in page.context.cookies() if c["name"] == "twinkle_session"]
    shot(page, "login-wrong-token")


def test_an_empty_token_is_refused_without_asking_the_server(page, stack):
    page.goto(f"{stack.url}/login")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#token-error")).to_have_text("Enter your API token.")


def test_sign_in_sets_the_session_cookie_and_sign_out_clears_it(page, stack):
    sign_in(page, stack)
    expect(page.get_by_role("heading", name="My jobs")).to_be_visible()
    expect(page.locator("#who")).to_contain_text(stack.user_name)
    session = [c for c in page.context.cookies() if c["name"] == "twinkle_session"]
    assert session and session[0]["httpOnly"], session

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{stack.url}/login")
    assert not [c for c in page.context.cookies() if c["name"] == "twinkle_session"]
    page.goto(f"{stack.url}/workers")
    page.wait_for_url(re.compile(r"/login\?next=%2Fworkers$"))


def test_signing_in_returns_to_the_page_asked_for(page, stack):
    page.goto(f"{stack.url}/workers")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.get_by_label("API token").fill(stack.user_token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}/workers")
    expect(page.get_by_role("heading", name="Workers")).to_be_visible()


# ---------------------------------------------------------------- submit


def test_a_non_python_file_shows_an_error_and_submits_nothing(page, stack):
    token = _user(stack)
    sign_in(page, stack, token)
    page.goto(f"{stack.url}/submit")
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just notes\n"}])
    error = page.locator("#file-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("notes.txt")
    expect(error).to_contain_text(".py")
    page.get_by_role("button", name="Submit job").click()
    summary = page.locator(".error-summary")
    expect(summary).to_be_visible()
    expect(summary).to_be_focused()
    expect(summary.get_by_role("link")).to_have_attribute("href", "#file")
    shot(page, "submit-non-python")
    assert _jobs(stack, token)["total"] == 0


def _paste(page, stack, code: str) -> None:
    """The submit page with ``code`` pasted in (the form then reads it with the server's script reader)."""
    page.goto(f"{stack.url}/submit")
    page.get_by_label("Paste code").check()
    page.get_by_label("Code", exact=True).fill(code)


def test_python_that_does_not_parse_is_reported_by_the_server_beside_the_code(page, stack):
    sign_in(page, stack, _user(stack))
    _paste(page, stack, "def broken(:\n    pass\n")
    expect(page.locator("#code-error")).to_contain_text("line 1")


def test_an_oversized_upload_shows_the_servers_limit_beside_the_field(page, stack):
    token = _user(stack)
    sign_in(page, stack, token)
    page.goto(f"{stack.url}/submit")
    big = b"# padding\n" * 160_000  # 1.6 MB of valid Python; the stack's limit is 1 MB
    page.set_input_files("#file", files=[{"name": "train.py", "mimeType": "text/x-python", "buffer": big}])
    page.get_by_role("button", name="Submit job").click()
    error = page.locator("#file-error")
    expect(error).to_be_visible()
    expect(page.locator(".error-summary")).to_be_visible()
    assert re.search(r"MB|large|limit", error.inner_text(), re.I), error.inner_text()
    shot(page, "submit-oversized")
    assert _jobs(stack, token)["total"] == 0


def test_device_groups_come_from_the_script_and_can_be_changed(page, stack):
    token = _user(stack)
    sign_in(page, stack, token)
    _paste(page, stack, SCRIPT)
    expect(page.locator("#dg-0-name")).to_have_value("actors")
    expect(page.locator("#dg-0-ranks")).to_have_value("2")
    expect(page.locator("#dg-0-device_type")).to_have_value("cpu")
    expect(page.locator("#inspect-status")).to_contain_text("Read 1 device group")
    shot(page, "submit-inspected")

    page.locator("#dg-0-ranks").fill("1")
    page.get_by_label("Job name (optional)").fill("edited request")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[^/]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", name="edited request")).to_be_visible()
    with stack.client(token) as c:
        job = c.get(f"/jobs/{job_id}").json()
    assert job["name"] == "edited request"
    groups = job["request"]["device_groups"]
    assert [(g["name"], g["ranks"], g["device_type"]) for g in groups] == [("actors", 1, "cpu")]


def test_environment_and_arguments_go_with_the_job_and_bad_ones_are_named(page, stack):
    token = _user(stack)
    sign_in(page, stack, token)
    _paste(page, stack, SCRIPT)
    expect(page.locator("#dg-0-name")).to_have_value("actors")
    page.get_by_label("Environment variables (optional)").fill("HOME=/root")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#env-error")).to_contain_text("HOME")
    expect(page.locator(".error-summary")).to_contain_text("Environment variables")
    assert _jobs(stack, token)["total"] == 0
    shot(page, "submit-env-refused")

    page.get_by_label("Environment variables (optional)").fill("EPOCHS=3\nNOTE=a b=c")
    page.get_by_label("Arguments (optional)").fill("--epochs\n3")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[^/]+$"))
    with stack.client(token) as c:
        job = c.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert job["env"] == {"EPOCHS": "3", "NOTE": "a b=c"}
    assert job["args"] == ["--epochs", "3"]
    # A 2-CPU job left queued would take the pooled worker's devices in a later test of this module's stack.
    with stack.client(token) as c:
        c.post(f"/jobs/{job['id']}/cancel").raise_for_status()


def test_client_side_checks_name_each_bad_device_field(page, stack):
    sign_in(page, stack, _user(stack))
    _paste(page, stack, "print('no groups declared')\n")
    page.get_by_role("button", name="Add a device group").click()
    page.locator("#dg-0-ranks").fill("0")
    page.locator("#dg-0-name").fill("")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#dg-0-ranks-error")).to_contain_text("whole number")
    expect(page.locator("#dg-0-name-error")).to_contain_text("name")
    expect(page.locator(".error-summary li")).to_have_count(2)


def test_the_servers_validation_errors_appear_beside_their_fields(page, stack):
    """A zip whose entrypoint is missing: the API's 422 names the field, and the page puts it there."""
    token = _user(stack)
    sign_in(page, stack, token)
    page.goto(f"{stack.url}/submit")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train.py", SCRIPT)
        zf.writestr("data/notes.md", "# notes\n")
    page.set_input_files("#file", files=[{"name": "project.zip", "mimeType": "application/zip", "buffer": buf.getvalue()}])
    entry = page.get_by_label("Entrypoint")
    expect(entry).to_be_visible()
    entry.fill("missing.py")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#entrypoint-error")).to_be_visible()
    expect(entry).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".error-summary")).to_contain_text("Entrypoint")
    shot(page, "submit-server-422")
    assert _jobs(stack, token)["total"] == 0


# ---------------------------------------------------------------- job list


def test_the_job_list_paginates_shows_the_queue_and_refreshes_live(page, stack):
    token = _user(stack)
    with stack.client(token) as c:
        for i in range(27):
            r = c.post("/jobs", data={"name": f"queued-{i:02d}"}, files={"file": ("train.py", SCRIPT.encode(), "text/x-python")})
            assert r.status_code == 201, r.text
    sign_in(page, stack, token)
    rows = page.locator("#jobs-table tbody tr")
    expect(rows).to_have_count(25)
    expect(page.locator("#jobs-status")).to_have_text("Showing 1–25 of 27 jobs")
    # Newest first, each waiting and saying why. No worker here offers 2 CPUs, so they are held: no place in
    # a queue they cannot move up in.
    first = rows.first
    expect(first.get_by_role("link")).to_have_text("queued-26")
    expect(first.locator(".badge")).to_have_text("Held")
    expect(first.locator(".queue-held")).to_contain_text("no worker can run it")
    expect(first).not_to_contain_text("in queue")
    shot(page, "jobs-page-1")

    page.get_by_role("link", name="Older →").click()
    page.wait_for_url(re.compile(r"page=2"))
    expect(rows).to_have_count(2)
    expect(page.locator("#jobs-status")).to_have_text("Showing 26–27 of 27 jobs")

    page.get_by_role("link", name="← Newer").click()
    expect(rows).to_have_count(25)
    with stack.client(token) as c:
        r = c.post("/jobs", data={"name": "arrived-later"}, files={"file": ("train.py", SCRIPT.encode(), "text/x-python")})
        assert r.status_code == 201, r.text
    # No reload: the list refreshes by itself.
    expect(rows.first.get_by_role("link")).to_have_text("arrived-later", timeout=10_000)
    expect(page.locator("#jobs-status")).to_have_text("Showing 1–25 of 28 jobs")


def test_the_state_filter_narrows_the_list(page, stack):
    token = _user(stack)
    with stack.client(token) as c:
        r = c.post("/jobs", data={"name": "to-cancel"}, files={"file": ("train.py", SCRIPT.encode(), "text/x-python")})
        c.post(f"/jobs/{r.json()['id']}/cancel").raise_for_status()
        c.post("/jobs", data={"name": "still-queued"}, files={"file": ("train.py", SCRIPT.encode(), "text/x-python")})
    sign_in(page, stack, token)
    expect(page.locator("#jobs-table tbody tr")).to_have_count(2)
    page.get_by_label("Show").select_option("cancelled")
    page.wait_for_url(re.compile(r"state=cancelled"))
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    expect(page.locator("#jobs-table tbody")).to_contain_text("to-cancel")


def test_a_new_user_sees_an_empty_state_with_a_way_forward(page, stack):
    sign_in(page, stack, _user(stack))
    expect(page.get_by_text("You have not submitted a job yet.")).to_be_visible()
    page.get_by_role("main").get_by_role("link", name="Submit a job").click()
    page.wait_for_url(f"{stack.url}/submit")


def test_another_users_job_is_not_found(page, stack):
    other = _user(stack)
    with stack.client(other) as c:
        job = c.post("/jobs", data={"name": "private"}, files={"file": ("train.py", SCRIPT.encode(), "text/x-python")}).json()
    sign_in(page, stack, _user(stack))
    page.goto(f"{stack.url}/jobs/{job['id']}")
    expect(page.get_by_role("heading", name="Job not found")).to_be_visible()


# ---------------------------------------------------------------- accessibility basics


def test_keyboard_users_get_a_skip_link_and_a_visible_focus(page, stack):
    sign_in(page, stack)
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    assert skip.bounding_box()["y"] >= 0  # on screen once focused
    outline = skip.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none"
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.closest('main') !== null")
    assert focused


def test_every_form_control_has_a_label(page, stack):
    sign_in(page, stack)
    page.goto(f"{stack.url}/submit")
    page.get_by_role("button", name="Add a device group").click()
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter((el) => !el.labels || el.labels.length === 0)
              .map((el) => el.id || el.name)"""
    )
    assert unlabelled == []


# ---------------------------------------------------------------- isolation


def test_workers_show_their_isolation_and_a_job_can_opt_out_of_the_sandbox(page, stack):
    """A worker without a sandbox is listed as such; only a job whose owner ticked the box may go there."""
    name = f"bare-{uuid.uuid4().hex[:6]}"
    with stack.client(stack.worker_token) as c:
        r = c.post("/workers/register", json={"name": name, "hostname": name, "isolation": "none",
                                              "device_groups": [{"ranks": 1, "device_type": "cpu"}],
                                              "probe": {"devices": [{"device_type": "cpu", "count": 4,
                                                                     "device_model": "Test CPU",
                                                                     "matmul_tflops": 0.25}]}})
        assert r.status_code == 200, r.text
    token = _user(stack)
    sign_in(page, stack, token)
    page.goto(f"{stack.url}/workers")
    expect(page.get_by_role("columnheader", name="Isolation")).to_be_visible()
    row = page.locator("#workers-table tr", has_text=name)
    expect(row.locator("[data-isolation]")).to_have_attribute("data-isolation", "none")
    expect(row).to_contain_text("no sandbox")
    # what the worker's hardware probe found, and where it stands (issue 13: claims are checked, work validated)
    expect(page.get_by_role("columnheader", name="Probed hardware")).to_be_visible()
    expect(row.locator("[data-probe]")).to_contain_text("4 × cpu · Test CPU · 0.25 TFLOP/s")
    expect(row.locator("[data-trust]")).to_contain_text("reputation 0.5 · 0 validated")

    _paste(page, stack, SCRIPT)
    expect(page.locator("#dg-0-name")).to_have_value("actors")
    box = page.get_by_label("Allow a worker without a sandbox")
    expect(box).not_to_be_checked()
    box.check()
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[^/]+$"))
    expect(page.locator("dd", has_text="opted out")).to_be_visible()
    with stack.client(token) as c:
        job = c.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert job["request"]["allow_unsandboxed"] is True


def test_a_job_is_sandboxed_unless_the_box_is_ticked(page, stack):
    token = _user(stack)
    sign_in(page, stack, token)
    _paste(page, stack, SCRIPT.replace("ranks=2", "ranks=64"))
    expect(page.locator("#dg-0-ranks")).to_have_value("64")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[^/]+$"))
    expect(page.locator("dd", has_text="sandboxed workers only")).to_be_visible()
    with stack.client(token) as c:
        job = c.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert job["request"]["allow_unsandboxed"] is False


# ---------------------------------------------------------------- run modes and shared devices

TWO_RANKS = """\
import twinkle
from twinkle import DeviceGroup
twinkle.initialize(mode='local', groups=[DeviceGroup(name='default', ranks=2, device_type='npu')])
"""
MODE_FROM_ENV = "import os, twinkle\ntwinkle.initialize(mode=os.environ['MODE'])\n"


def _wait(check, timeout: float = 30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_pooled_worker_shows_which_job_holds_which_devices_and_logs_show_rank_0_first(page, stack):
    """A worker (played by this test: register, start, heartbeat) offering 4 CPU devices as a pool runs two 2-rank
    jobs side by side; the Workers page says which job holds which devices, the job page shows rank 0's lines.
    NPUs, not CPUs: earlier tests of this module leave CPU jobs queued, and fair share would give them the pool."""
    import threading

    name = f"pool-{uuid.uuid4().hex[:6]}"
    with stack.client(stack.worker_token) as c:
        r = c.post("/workers/register", json={"name": name, "hostname": name, "isolation": "bwrap", "device_groups": [
            {"name": "npus", "ranks": 4, "device_type": "npu", "pooled": True}],
            "probe": {"devices": [{"device_type": "npu", "count": 4}]}})
        assert r.status_code == 200, r.text
        worker_id = r.json()["worker_id"]
    token = _user(stack)
    running: dict[str, int] = {}
    stop = threading.Event()

    def heartbeats() -> None:  # the stack's lease is 5 s: keep the worker live for the whole test
        with stack.client(stack.worker_token) as w:
            while not stop.wait(1.0):
                w.post(f"/workers/{worker_id}/heartbeat",
                       json={"running": [{"job_id": j, "attempt": n} for j, n in list(running.items())]})

    beat = threading.Thread(target=heartbeats, daemon=True)
    beat.start()
    try:
        with stack.client(token) as c, stack.client(stack.worker_token) as w:
            jobs = [c.post("/jobs", files={"file": ("train.py", TWO_RANKS.encode())}).json()["id"] for _ in range(2)]

            def start_each_once_assigned() -> bool:  # started at once: an unstarted assignment is sent again
                for jid in jobs:
                    job = c.get(f"/jobs/{jid}").json()
                    started = jid not in running and job["state"] == "assigned" and w.post(
                        f"/attempts/{jid}/{job['attempt']}/start").status_code == 200
                    if started:
                        running[jid] = job["attempt"]
                return len(running) == 2

            _wait(start_each_once_assigned, 90)
        sign_in(page, stack, token)
        page.goto(f"{stack.url}/workers")
        row = page.locator("#workers-table tr", has_text=name)
        expect(row).to_contain_text("shared by count")
        for jid in jobs:
            expect(row.locator(f".devices-in-use li[data-job-id='{jid}']")).to_contain_text("npus devices")

        jid = jobs[0]
        with stack.client(stack.worker_token) as w:
            lines = [{"ts": 0.0, "stream": "stdout", "text": t} for t in ("[rank 0] loss from rank zero",
                                                                          "[rank 1] loss from rank one")]
            assert w.post(f"/attempts/{jid}/{running[jid]}/logs", json={"lines": lines}).status_code == 200
        page.goto(f"{stack.url}/jobs/{jid}")
        expect(page.locator("dd", has_text="torchrun")).to_be_visible()
        log = page.locator("#log")
        expect(log).to_contain_text("loss from rank zero")
        expect(log.get_by_text("loss from rank one")).to_be_hidden()
        # search counts the matches the reader can see: other ranks' only once they are shown
        page.get_by_label("Search the log").fill("loss from")
        expect(page.locator("#log-search-count")).to_have_text("1 match on 1 line")
        page.get_by_label("All ranks").check()
        expect(log.get_by_text("loss from rank one")).to_be_visible()
        expect(page.locator("#log-search-count")).to_have_text("2 matches on 2 lines")
    finally:
        stop.set()
        beat.join(5)


def test_the_submit_page_warns_when_the_launcher_is_unclear_and_lets_the_owner_choose(page, stack):
    token = _user(stack)
    sign_in(page, stack, token)
    _paste(page, stack, MODE_FROM_ENV)
    expect(page.locator(".warnings")).to_contain_text("--launcher")
    page.get_by_label("Launcher").select_option("torchrun")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[^/]+$"))
    expect(page.locator("dd", has_text="torchrun")).to_be_visible()
    with stack.client(token) as c:
        job = c.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert job["request"]["launcher"] == "torchrun"
