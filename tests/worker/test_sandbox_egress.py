"""The allow-list egress proxy: a bwrap job reaches only allowed hosts, over HTTPS, at public addresses."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tests.worker.test_sandbox_attacks import run_job
from worker.sandbox import BwrapSandbox
from worker.sandbox.bwrap import find_bwrap
from worker.sandbox.egress import EgressProxy, host_allowed

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed")

PROBE = """
    import socket, os
    def connect(host, port):
        s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
        s.sendall(f"CONNECT {host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n".encode())
        head = s.recv(4096).decode()
        print("ANSWER", host, port, head.splitlines()[0], "|", head.split("\\r\\n\\r\\n", 1)[-1].strip())
        return s
    for host, port in TARGETS:
        connect(host, port)
    try:
        socket.create_connection(("1.1.1.1", 443), timeout=3)
        print("DIRECT CONNECTED")
    except OSError as exc:
        print("DIRECT BLOCKED", type(exc).__name__)
    print("PROXY VAR", os.environ.get("HTTPS_PROXY"))
"""


def test_allow_list_matching():
    allow = ("huggingface.co", "hf.co")
    assert host_allowed("huggingface.co", allow) and host_allowed("cdn-lfs.hf.co", allow)
    assert not host_allowed("evilhuggingface.co", allow) and not host_allowed("hf.co.evil.org", allow)


def test_egress_reaches_only_allowed_public_hosts(tmp_path):
    sandbox = BwrapSandbox(egress_allow=("pypi.org", "localhost"))
    targets = [("example.com", 443), ("pypi.org", 80), ("localhost", 443), ("127.0.0.1", 443)]
    result, sink = run_job(tmp_path, PROBE.replace("TARGETS", repr(targets)), sandbox)
    out = "\n".join(sink.text())
    assert result.state == "succeeded", (result, sink.text("stderr"))
    assert "ANSWER example.com 443 HTTP/1.1 403 Forbidden | example.com is not on this worker's egress allow-list" in out
    assert "ANSWER pypi.org 80 HTTP/1.1 403 Forbidden | port 80 is not allowed" in out
    # an allowed name that resolves to the host's loopback (DNS rebinding, or the API's own name) is refused
    assert "ANSWER localhost 443 HTTP/1.1 403 Forbidden | localhost resolves to a private or local address" in out
    assert "ANSWER 127.0.0.1 443 HTTP/1.1 403 Forbidden | 127.0.0.1 is not on" in out
    assert "DIRECT BLOCKED" in out and "PROXY VAR http://127.0.0.1:3128" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="a stand-in hub on port 443 needs root")
def test_an_allowed_connection_carries_bytes_both_ways(tmp_path, monkeypatch):
    """A stand-in hub on the host's 127.0.0.1:443, allowed by a test-only address rule: bytes go through."""
    hub = socket.socket()
    hub.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        hub.bind(("127.0.0.1", 443))
    except OSError:
        pytest.skip("port 443 is taken")
    hub.listen()

    def serve():
        conn, _ = hub.accept()
        data = conn.recv(100)
        conn.sendall(b"hub says " + data)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    real = EgressProxy.__init__
    monkeypatch.setattr(EgressProxy, "__init__", lambda self, allow: real(self, allow, address_ok=lambda ip: True))
    script = """
        import socket
        s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
        s.sendall(b"CONNECT localhost:443 HTTP/1.1\\r\\n\\r\\n")
        print(s.recv(4096).decode().splitlines()[0])
        s.sendall(b"hello")
        print(s.recv(100).decode())
    """
    try:
        _, sink = run_job(tmp_path, script, BwrapSandbox(egress_allow=("localhost",)))
    finally:
        hub.close()
    assert sink.text()[:2] == ["HTTP/1.1 200 Connection established", "hub says hello"], (sink.text(), sink.text("stderr"))
