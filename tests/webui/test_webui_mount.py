"""``webui.mount``: the shell on every page path, hashed immutable assets, and no shadowing of the API."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import webui


@pytest.fixture()
def client() -> TestClient:
    app = FastAPI()

    @app.get("/api/v1/jobs/{job_id}")
    def api_job(job_id: str) -> dict:
        return {"id": job_id}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    webui.mount(app)
    return TestClient(app)


def _assets_prefix(html: str) -> str:
    match = re.search(r'src="(/ui/[0-9a-f]{12})/app\.js"', html)
    assert match, html
    return match.group(1)


@pytest.mark.parametrize("path", ["/", "/login", "/submit", "/workers", "/jobs/abc123", "/compare"])
def test_every_page_path_serves_the_shell_with_a_strict_csp(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<main id="main"' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-cache"
    assert "{{ASSETS}}" not in r.text


def test_api_and_health_routes_are_not_shadowed(client):
    assert client.get("/api/v1/jobs/abc123").json() == {"id": "abc123"}
    assert client.get("/healthz").json() == {"ok": True}
    assert client.get("/nope/page").status_code == 404


def test_assets_are_served_under_their_content_hash_and_cached_forever(client):
    prefix = _assets_prefix(client.get("/").text)
    assert prefix == f"/ui/{webui.asset_version()}"
    for name, kind in [("app.js", "javascript"), ("app.css", "text/css"), ("pages/job.js", "javascript")]:
        r = client.get(f"{prefix}/{name}")
        assert r.status_code == 200, name
        assert kind in r.headers["content-type"]
        assert "immutable" in r.headers["cache-control"]
    assert client.get(f"{prefix}/missing.js").status_code == 404
    assert client.get("/ui/000000000000/app.js").status_code == 404


def test_the_asset_version_changes_when_any_asset_changes(tmp_path):
    (tmp_path / "a.js").write_text("export const a = 1;\n")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "b.js").write_text("export const b = 1;\n")
    before = webui.asset_version(tmp_path)
    assert webui.asset_version(tmp_path) == before
    (tmp_path / "pages" / "b.js").write_text("export const b = 2;\n")
    assert webui.asset_version(tmp_path) != before


def test_no_asset_is_fetched_from_another_origin():
    """Everything the pages load is in webui/static: no CDN, no web font, no remote script."""
    remote = re.compile(r"""(?:src|href|import|from|url\()\s*=?\s*["'(]?\s*(?:https?:)?//""", re.I)
    files = [webui.SHELL_FILE, *sorted(p for p in webui.STATIC_DIR.rglob("*") if p.suffix in {".js", ".css", ".html"})]
    offenders = [f"{p.name}: {m.group(0)}" for p in files for m in remote.finditer(p.read_text())]
    assert offenders == []


def test_every_page_module_the_router_names_exists():
    app_js = (webui.STATIC_DIR / "app.js").read_text()
    modules = re.findall(r"module: '\./(pages/[a-z]+\.js)'", app_js)
    assert len(modules) == len(webui.PAGES)  # one module per page path
    for module in modules:
        assert (webui.STATIC_DIR / module).is_file(), module
