"""The client's connection: base URL, key, session, request id, and one ``request`` helper (http.md §9.1, §9.7)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import threading
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

import requests

__all__ = ["TwinkleClientError", "get_base_url", "request", "serialize", "state"]


class TwinkleClientError(requests.HTTPError):
    """A non-2xx answer; the message carries the server's ``detail`` and ``.status`` its HTTP status."""

    def __init__(self, status: int, detail: str, response: Any = None) -> None:
        super().__init__(f"Request failed with status {status}: {detail}", response=response)
        self.status = status
        self.detail = detail


class _State:
    def __init__(self) -> None:
        self.base_url = os.environ.get("TWINKLE_SERVER_URL", "http://127.0.0.1:8000")
        self.api_key = os.environ.get("TWINKLE_SERVER_TOKEN", "EMPTY_TOKEN")
        self.session_id: str | None = None
        self.request_id = f"{time.strftime('%Y%m%d_%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.local = threading.local()  # one kept-alive connection per thread (the heartbeat has its own)


state = _State()


def get_base_url() -> str:
    url = state.base_url.rstrip("/")
    return url if url.endswith("/api/v1") else url + "/api/v1"


def headers() -> dict[str, str]:
    out = {"Authorization": f"Bearer {state.api_key}", "Twinkle-Authorization": f"Bearer {state.api_key}",
           "x-request-id": state.request_id}
    if state.session_id:
        out["X-Twinkle-Session-Id"] = state.session_id
    return out


def _proxy_for(url: urllib.parse.SplitResult) -> urllib.parse.SplitResult | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``/``HTTPS_PROXY``, ``NO_PROXY`` honoured), the
    same variables ``requests`` reads."""
    proxy = urllib.request.getproxies().get(url.scheme)
    if not proxy or urllib.request.proxy_bypass(url.netloc):
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def _proxy_headers(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if not proxy.username:
        return {}
    user = urllib.parse.unquote(proxy.username) + ":" + urllib.parse.unquote(proxy.password or "")
    return {"Proxy-Authorization": "Basic " + base64.b64encode(user.encode()).decode()}


def _connection(
    url: urllib.parse.SplitResult, timeout: float
) -> tuple[http.client.HTTPConnection, urllib.parse.SplitResult | None]:
    """This thread's connection to the server, reused while the server keeps it open, and the proxy when requests
    on it must name the absolute URL (plain HTTP through a proxy; HTTPS goes through a ``CONNECT`` tunnel instead).

    ``http.client`` rather than ``requests``: a training step is a few small calls, and ``requests`` costs
    about 1-2 ms of client CPU per call on top (bench/multitenant.py measures the client's share).
    """
    proxy = _proxy_for(url)
    key = (url.scheme, url.netloc, proxy.netloc if proxy else None)
    conn = getattr(state.local, "conn", None)
    if conn is not None and (getattr(state.local, "key", None) != key or _dropped(conn)):
        conn.close()
        conn = None
    if conn is None:
        if proxy is None:
            cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            conn = cls(url.netloc, timeout=timeout)
        elif url.scheme == "https":
            conn = http.client.HTTPSConnection(proxy.netloc.rpartition("@")[2], timeout=timeout)
            conn.set_tunnel(url.hostname or "", url.port, headers=_proxy_headers(proxy))
        else:
            conn = http.client.HTTPConnection(proxy.netloc.rpartition("@")[2], timeout=timeout)
        state.local.conn, state.local.key = conn, key
    conn.timeout = timeout
    if conn.sock is not None:
        conn.sock.settimeout(timeout)
    return conn, proxy if url.scheme != "https" else None


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True when the server closed the idle connection (readable with nothing to read), as urllib3 checks."""
    if conn.sock is None:
        return False
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def request(method: str, path: str, body: Any = None, timeout: float = 600, **params: Any) -> Any:
    """One call to ``<base>/api/v1/<path>``; returns the decoded JSON, raises ``TwinkleClientError`` otherwise."""
    url = urllib.parse.urlsplit(path if path.startswith("http") else f"{get_base_url()}/{path.lstrip('/')}")
    target = url.path + (f"?{url.query}" if url.query else "")
    if params:
        target += ("&" if url.query else "?") + urllib.parse.urlencode(params)
    send = headers()
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        send["Content-Type"] = "application/json"
    conn, http_proxy = _connection(url, timeout)
    if http_proxy is not None:  # through an HTTP proxy: the request line names the server
        target = f"{url.scheme}://{url.netloc}{target}"
        send.update(_proxy_headers(http_proxy))
    try:
        conn.request(method, target, body=payload, headers=send)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        state.local.conn = None
        raise requests.ConnectionError(f"{method} {url.geturl()}: {exc} (is twinkle-server running at "
                                       f"{state.base_url}?)") from exc
    if response.will_close:
        conn.close()
        state.local.conn = None
    if response.status == 410:
        raise StopIteration
    if not 200 <= response.status < 300:
        try:
            detail = json.loads(data).get("detail", data.decode(errors="replace"))
        except (ValueError, AttributeError):
            detail = data.decode(errors="replace")
        raise TwinkleClientError(response.status, str(detail))
    return json.loads(data) if data else None


def serialize(value: Any) -> Any:
    """Top-level body values (http.md §9.6): server-side objects by ``processor_id``, ``DatasetMeta`` and
    ``LoraConfig`` as tagged JSON strings, arrays as lists."""
    if isinstance(getattr(value, "processor_id", None), str):
        return value.processor_id
    if type(value).__name__ == "DatasetMeta" and hasattr(value, "dataset_id"):
        return _dataset_meta(value)
    from peft import LoraConfig

    if isinstance(value, LoraConfig):
        data = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(value).items()
                if not k.startswith("_") and isinstance(v, (str, int, float, bool, list, set, dict, type(None)))}
        data["_TWINKLE_TYPE_"] = "LoraConfig"
        return json.dumps(data)
    return _plain(value)


def _dataset_meta(meta: Any) -> str:
    data_slice = meta.data_slice
    if isinstance(data_slice, range):
        data_slice = {"_slice_type_": "range", "start": data_slice.start, "stop": data_slice.stop,
                      "step": data_slice.step}
    elif data_slice is not None:
        if not isinstance(data_slice, (list, tuple)):
            raise TypeError("DatasetMeta.data_slice must be a range or a list of indices to send it to a server")
        data_slice = {"_slice_type_": "list", "values": [int(i) for i in data_slice]}
    rows = meta.data
    if rows is not None and not isinstance(rows, (list, dict)):
        rows = list(rows)  # a generator: sent as the rows it yields
    return json.dumps({"dataset_id": meta.dataset_id, "subset_name": meta.subset_name, "split": meta.split,
                       "data_slice": data_slice, "data": _plain(rows), "_TWINKLE_TYPE_": "DatasetMeta"})


def _plain(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # a torch tensor
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy
        return value.tolist()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    raise TypeError(f"Unsupported object {type(value).__name__}: send classes by name (e.g. 'AdamW') and data "
                    f"as lists/dicts")
