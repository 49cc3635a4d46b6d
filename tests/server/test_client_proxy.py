"""``twinkle_client`` honours ``HTTP_PROXY``/``NO_PROXY`` as ``requests`` does: clusters reach the server through
a proxy. A real forwarding proxy and a real server on loopback; the proxy records what passed through it."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import ClassVar

import pytest

from twinkle_client import http as client_http


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[tuple[str, _Server]]:
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


class _Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Proxy(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:  # a forward proxy gets the absolute URL and forwards it
        type(self).seen.append((self.path, self.headers.get("Proxy-Authorization")))
        target = urllib.parse.urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.netloc, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-authorization"}
        upstream.request("GET", target.path + (f"?{target.query}" if target.query else ""), headers=headers)
        answer = upstream.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.getheader("Content-Type") or "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def api() -> Iterator[str]:
    yield from (addr for addr, _ in _serve(_Api))


@pytest.fixture()
def proxy() -> Iterator[str]:
    _Proxy.seen = []
    yield from (addr for addr, _ in _serve(_Proxy))


@pytest.fixture(autouse=True)
def fresh_connection(monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(client_http.state, "local", threading.local())
    monkeypatch.setattr(client_http.state, "api_key", "tml-alice")


def test_requests_go_through_the_proxy_the_environment_names_with_its_credentials(api, proxy, monkeypatch):
    monkeypatch.setattr(client_http.state, "base_url", f"http://{api}")
    monkeypatch.setenv("HTTP_PROXY", f"http://bob:s%40cret@{proxy}")
    answer = client_http.request("GET", "/models", limit=2)
    assert answer == {"path": "/api/v1/models?limit=2", "auth": "Bearer tml-alice"}
    [(line, credentials)] = _Proxy.seen
    assert line == f"http://{api}/api/v1/models?limit=2"
    assert credentials == "Basic " + base64.b64encode(b"bob:s@cret").decode()
    client_http.request("GET", "/models")  # the kept-alive connection to the proxy is reused
    assert len(_Proxy.seen) == 2


def test_no_proxy_goes_straight_to_the_server(api, proxy, monkeypatch):
    monkeypatch.setattr(client_http.state, "base_url", f"http://{api}")
    monkeypatch.setenv("HTTP_PROXY", f"http://{proxy}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert client_http.request("GET", "/models")["path"] == "/api/v1/models"
    assert _Proxy.seen == []
