"""The optional way out of a sandbox with no network: an allow-list HTTPS proxy run by the worker.

* Outside (``EgressProxy``, a thread of the worker): answers ``CONNECT host:443`` on a Unix socket, only for a
  host on the allow-list (itself or a subdomain) that resolves to a public address; anything else gets a 403
  naming the reason. It never connects to loopback, private, link-local or reserved addresses, so the API, Redis,
  the LAN and cloud metadata stay out of reach even through an allowed name (DNS rebinding).
* Inside: the job's own loopback has a forwarder on ``127.0.0.1:3128`` to that socket (bind-mounted at
  ``/run/twinkle/egress.sock``), and ``HTTPS_PROXY`` names it, so ``requests``, ``httpx``, ``huggingface_hub``
  and ``modelscope`` use it unchanged. Plain HTTP is not proxied.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import socketserver
import tempfile
import threading
from pathlib import Path

__all__ = ["DEFAULT_ALLOW", "INSIDE_PORT", "INSIDE_SOCKET", "EgressProxy", "forwarder_argv", "host_allowed"]

log = logging.getLogger(__name__)

DEFAULT_ALLOW = ("huggingface.co", "hf.co", "modelscope.cn")  # model hubs (their CDNs are subdomains)
INSIDE_SOCKET = "/run/twinkle/egress.sock"
INSIDE_PORT = 3128

# runs inside the sandbox as the job's Python: forward 127.0.0.1:PORT to the proxy's socket, then become the job
_FORWARDER = r"""
import os, socket, sys, threading
sock_path, port, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
srv = socket.socket()
srv.bind(("127.0.0.1", port))
srv.listen(64)
if os.fork() == 0:
    def pipe(a, b):
        try:
            while (data := a.recv(65536)):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
    while True:
        conn, _ = srv.accept()
        up = socket.socket(socket.AF_UNIX)
        try:
            up.connect(sock_path)
        except OSError:
            conn.close()
            continue
        threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
srv.close()
os.execv(argv[0], argv)
"""


def forwarder_argv(python: str, argv: list[str]) -> list[str]:
    return [python, "-c", _FORWARDER, INSIDE_SOCKET, str(INSIDE_PORT), *argv]


def host_allowed(host: str, allow: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == a or host.endswith("." + a) for a in allow)


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_global and not addr.is_multicast


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _refuse(self, why: str) -> None:
        log.info("egress refused: %s", why)
        self.wfile.write(f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\n{why}\n".encode())

    def handle(self) -> None:
        request = self.rfile.readline(8192).decode("latin-1").split()
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):  # the headers: nothing in them matters
            pass
        if len(request) != 3 or request[0] != "CONNECT" or ":" not in request[1]:
            return self._refuse("only CONNECT host:443 (HTTPS) goes out through this proxy")
        host, _, port = request[1].rpartition(":")
        host = host.strip("[]")
        if port != "443":
            return self._refuse(f"port {port} is not allowed (only 443)")
        if not host_allowed(host, self.server.allow):
            return self._refuse(f"{host} is not on this worker's egress allow-list {list(self.server.allow)}")
        try:
            ips = [str(ai[4][0]) for ai in socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)]
        except OSError as exc:
            return self._refuse(f"cannot resolve {host}: {exc}")
        public = [ip for ip in ips if self.server.address_ok(ip)]
        if not public:
            return self._refuse(f"{host} resolves to a private or local address {ips}")
        try:
            upstream = socket.create_connection((public[0], 443), timeout=15)
        except OSError as exc:
            return self._refuse(f"cannot connect to {host}: {exc}")
        upstream.settimeout(None)
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        t = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
        t.start()
        _pipe(self.connection, upstream)
        t.join()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow: tuple[str, ...] = ()
    address_ok = staticmethod(_public)


class EgressProxy:
    """One per attempt: a Unix socket in a folder of its own (``folder``, bind-mounted at ``/run/twinkle``)."""

    def __init__(self, allow: tuple[str, ...], address_ok=None):
        """``address_ok(ip) -> bool`` replaces the public-address rule (tests only: a loopback stand-in hub)."""
        self.folder = Path(tempfile.mkdtemp(prefix="twinkle-egress-"))
        self.folder.chmod(0o755)
        self._server = _Server(str(self.folder / "egress.sock"), _Handler)
        self._server.allow = tuple(a.lower().strip(".") for a in allow)
        if address_ok is not None:
            self._server.address_ok = address_ok
        threading.Thread(target=self._server.serve_forever, daemon=True, name="sandbox-egress").start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for p in self.folder.iterdir():
            p.unlink(missing_ok=True)
        self.folder.rmdir()
