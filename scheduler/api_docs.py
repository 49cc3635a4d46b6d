"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from local copies, so the API's documentation works offline.

FastAPI's own pages load both from a CDN and start Swagger UI with an inline script, which a strict CSP blocks
(and an offline browser cannot fetch). Here the assets come from the ``fastapi-offline`` package (Swagger UI's
and ReDoc's release files, vendored there) under ``/docs/assets/``, and Swagger UI is started by a small script
of ours, so the pages carry a CSP that allows nothing from another origin and no inline script. ReDoc writes its
styles into ``<style>`` elements at run time and parses the spec in a ``blob:`` worker, so its page also allows
inline styles and ``blob:`` workers (still no inline script, nothing remote).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

__all__ = ["ASSETS", "DOCS", "REDOC", "assets_dir", "mount_docs"]

DOCS = "/docs"
REDOC = "/redoc"
ASSETS = "/docs/assets"

_CSP_BASE = (
    "default-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
DOCS_CSP = _CSP_BASE + "; style-src 'self'"
REDOC_CSP = _CSP_BASE + "; style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; font-src 'self' data:"

# Swagger UI's options: the spec from this server, and no validator badge (it calls validator.swagger.io).
_SWAGGER_INIT = """window.addEventListener('load', function () {
  window.ui = SwaggerUIBundle({
    url: %(spec)s,
    dom_id: '#swagger-ui',
    validatorUrl: null,
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout'
  });
});
"""


def assets_dir() -> Path:
    """Where ``fastapi-offline`` keeps ``swagger-ui-bundle.js``, ``swagger-ui.css`` and ``redoc.standalone.js``."""
    return Path(str(files("fastapi_offline") / "static"))


def _page(title: str, head: str, body: str, csp: str) -> HTMLResponse:
    html = (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n{head}</head>\n<body>\n{body}</body>\n</html>\n"
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache",
                                       "Referrer-Policy": "same-origin"})


def mount_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets; call with ``FastAPI(docs_url=None, redoc_url=None)``."""
    import json

    title = f"{app.title} - API"
    spec = app.openapi_url or "/openapi.json"
    init_js = (_SWAGGER_INIT % {"spec": json.dumps(spec)}).encode()

    async def docs(_request: Request) -> Response:
        return _page(
            title,
            f'<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">\n<link rel="icon" href="data:,">\n',
            f'<div id="swagger-ui"></div>\n<script src="{ASSETS}/swagger-ui-bundle.js"></script>\n'
            f'<script src="{DOCS}/init.js"></script>\n',
            DOCS_CSP,
        )

    async def init(_request: Request) -> Response:
        return Response(init_js, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    async def redoc(_request: Request) -> Response:
        return _page(
            title, '<link rel="icon" href="data:,">\n',
            f'<redoc spec-url="{spec}"></redoc>\n<script src="{ASSETS}/redoc.standalone.js"></script>\n', REDOC_CSP,
        )

    app.add_route(DOCS, docs, include_in_schema=False)
    app.add_route(DOCS + "/init.js", init, include_in_schema=False)
    app.add_route(REDOC, redoc, include_in_schema=False)
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")
