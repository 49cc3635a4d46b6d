"""``/docs`` and ``/redoc`` work offline under a strict CSP, and a browser asking for an unknown page gets the web
UI's "not found" page (the shell, status 404) while API clients still get JSON."""

from __future__ import annotations

import re

import pytest

from scheduler.testing.net import serving

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_name_no_other_origin_and_forbid_inline_script(scheduler_env, path):
    c = scheduler_env.client
    r = c.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text), r.text  # nothing from a CDN
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp and "http" not in csp
    assert "<script>" not in r.text  # every script is a file of ours (an inline one would need 'unsafe-inline')
    for ref in re.findall(r"""(?:src|href)="(/[^"]+)\"""", r.text):
        asset = c.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref


def test_unknown_pages_get_the_ui_not_found_page_and_api_clients_json(scheduler_env):
    c = scheduler_env.client
    page = c.get("/no/such/page", headers=HTML)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "<!doctype html>" in page.text.lower() and "script-src 'self'" in page.headers["content-security-policy"]
    assert c.get("/no/such/page").json()["error"]["code"] == "not_found"  # no Accept: text/html
    api = c.get("/api/v1/no-such-route", headers=HTML)
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
    assert c.post("/no/such/page", headers=HTML).headers["content-type"].startswith("application/json")


@pytest.fixture()
def live_url(scheduler_env):
    with serving(scheduler_env.app, lifespan="off") as url:
        yield url


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize(("path", "shown"), [("/docs", "/api/v1/jobs/{job_id}/resubmit"),
                                              ("/redoc", "Twinkle Commons scheduler")])
def test_the_docs_render_in_chromium_offline_without_csp_violations(live_url, chromium, path, shown):
    context = chromium.new_context()
    page = context.new_page()
    elsewhere: list[str] = []
    problems: list[str] = []

    def offline(route):  # the machine is offline: anything not from our server fails, and is counted
        if route.request.url.startswith(live_url) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(live_url + path)
    page.get_by_text(shown).first.wait_for(timeout=150_000)  # ReDoc parses the whole spec: slow on a busy CPU
    # ReDoc's sidebar badge is hard-coded to its CDN; the CSP blocks it (that is the point) and ReDoc hides it
    problems = [p for p in problems if "cdn.redoc.ly/redoc/logo-mini.svg" not in p]
    assert elsewhere == [] and problems == []
    context.close()
