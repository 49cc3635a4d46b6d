"""Notifiers: tell a person when a run fails. ``twinkle.initialize(notifier=...)`` keeps one for remote calls.

* ``Notifier``: the interface, ``__call__(message)``, ``to_dict()`` / ``Notifier.from_dict(d)`` (dispatch on
  ``d['class']``) so Ray workers can rebuild it from ``TWINKLE_NOTIFIER``.
* ``DingNotifier(ding_url, secret=None, timeout=5.0)``: a DingTalk robot (markdown; HMAC-SHA256 signed when a
  secret is set); raises on an HTTP error or ``errcode != 0``.
* ``notify_exception(notifier, context, exc, name=None)``: send once per failure fingerprint per run (a claim
  file under ``./.locks``), never raise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import traceback
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["DingNotifier", "Notifier", "notify_exception"]


class Notifier:
    """Send a text message somewhere. Subclasses implement ``__call__`` and keep their settings in attributes."""

    registry: ClassVar[dict[str, type[Notifier]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Notifier.registry[cls.__name__] = cls

    def __call__(self, message: str) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Notifier:
        data = dict(data)
        name = data.pop("class", None)
        cls = Notifier.registry.get(name or "")
        if cls is None:
            raise ValueError(f"unknown notifier class {name!r}; known: {', '.join(sorted(Notifier.registry))}")
        return cls(**data)


class DingNotifier(Notifier):
    """Post markdown to a DingTalk robot webhook.

    Args:
        ding_url: the robot's webhook URL (``https://oapi.dingtalk.com/robot/send?access_token=...``).
        secret: the robot's signing secret; when set, ``timestamp`` and ``sign`` are added to the URL.
        timeout: seconds for the HTTP request.
    """

    def __init__(self, ding_url: str, secret: str | None = None, timeout: float = 5.0) -> None:
        self.ding_url, self.secret, self.timeout = ding_url, secret, float(timeout)

    def signed_url(self, timestamp: int | None = None) -> str:
        if not self.secret:
            return self.ding_url
        timestamp = int(time.time() * 1000) if timestamp is None else timestamp
        digest = hmac.new(self.secret.encode(), f"{timestamp}\n{self.secret}".encode(), hashlib.sha256).digest()
        sign = urllib.parse.quote_plus(base64.b64encode(digest))
        joiner = "&" if "?" in self.ding_url else "?"
        return f"{self.ding_url}{joiner}timestamp={timestamp}&sign={sign}"

    def __call__(self, message: str, title: str = "twinkle") -> None:
        body = json.dumps({"msgtype": "markdown", "markdown": {"title": title, "text": message}}).encode()
        request = urllib.request.Request(self.signed_url(), data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read() or b"{}")
        if reply.get("errcode", 0) != 0:
            raise RuntimeError(f"DingTalk refused the message: errcode {reply.get('errcode')}: {reply.get('errmsg')}")


def notify_exception(notifier: Notifier | None, context: str, exc: BaseException, name: str | None = None) -> bool:
    """Send ``exc`` with ``context`` once per fingerprint per run; True when sent. Never raises."""
    if notifier is None:
        return False
    try:
        fingerprint = hashlib.sha256(f"{name}|{context}|{type(exc).__name__}|{exc}".encode()).hexdigest()[:16]
        run = os.environ.get("TWINKLE_RUN_ID") or str(os.getppid())
        locks = Path(".locks")
        locks.mkdir(exist_ok=True)
        claim = locks / f"notify-{run}-{fingerprint}.claim"
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:]
        notifier(f"### {name or 'twinkle'}: {type(exc).__name__}\n\n{context}\n\n```\n{trace}\n```")
        return True
    except Exception:  # noqa: BLE001 - a notifier must never take the run down
        return False
