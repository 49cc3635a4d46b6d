"""The browser UI: one HTML shell plus plain ES modules that call the public ``/api/v1`` routes.

``mount(app)`` adds the page routes (``/``, ``/login``, ``/submit``, ``/workers``, ``/jobs/{job_id}``,
``/compare``) and the
static assets under ``/ui/{version}/``. The version is a hash of the asset files, so assets are cached forever
(``immutable``) and a new release changes every URL; only the small shell is revalidated. The UI has no private
endpoints: everything it shows comes from the same routes the CLI uses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["PAGES", "STATIC_DIR", "asset_version", "mount"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
SHELL_FILE = Path(__file__).resolve().parent / "index.html"

#: Paths that serve the HTML shell; ``app.js`` picks the page module from ``location.pathname``.
PAGES = ("/", "/login", "/submit", "/workers", "/jobs/{job_id}", "/compare")

# Strict CSP: no inline script or style, nothing from another origin. Downloads are plain navigations
# (presigned S3 URLs live elsewhere), which ``connect-src`` does not govern.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_SHELL_HEADERS = {
    "Content-Security-Policy": _CSP,
    "Cache-Control": "no-cache",
    "Referrer-Policy": "same-origin",
}


def asset_version(directory: Path = STATIC_DIR) -> str:
    """A short hash of every asset's path and bytes: it changes whenever any asset changes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class _ImmutableStatic(StaticFiles):
    """Static files whose URL carries the content hash, so browsers never need to revalidate them."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def mount(app: FastAPI) -> None:
    """Add the web UI's pages and static assets to the API app (whose middleware adds ``nosniff`` to every answer).

    Call it after the API routers are included; the UI's routes never shadow ``/api/v1``, ``/healthz``,
    ``/readyz`` or ``/metrics``.
    """
    version = asset_version()
    prefix = f"/ui/{version}"
    shell = SHELL_FILE.read_text(encoding="utf-8").replace("{{ASSETS}}", prefix).encode()

    async def shell_page(request: Request) -> Response:
        return Response(shell, media_type="text/html; charset=utf-8", headers=_SHELL_HEADERS)

    for path in PAGES:
        app.add_api_route(path, shell_page, methods=["GET"], include_in_schema=False, name=f"webui:{path}")
    app.mount(prefix, _ImmutableStatic(directory=STATIC_DIR), name="webui-static")
    # scheduler.main answers a browser's 404 with this: the shell, whose router shows its "not found" view
    app.state.not_found_page = lambda: Response(
        shell, status_code=404, media_type="text/html; charset=utf-8", headers=_SHELL_HEADERS
    )
