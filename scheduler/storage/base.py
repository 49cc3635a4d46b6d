"""The storage interface: bundles, logs and checkpoints under ``users/{user}/jobs/{job}/...``."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class StorageError(Exception):
    """A storage backend failed (missing object, unreachable endpoint)."""


class ObjectNotFound(StorageError):
    pass


def check_key(key: str) -> str:
    """Refuse keys that could escape the layout (``..``, absolute, empty segments)."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(abc.ABC):
    """One interface for the local folder and S3; keys are ``/``-separated relative paths."""

    @abc.abstractmethod
    def put_file(self, key: str, fileobj: BinaryIO) -> int:
        """Store the rest of ``fileobj`` under ``key``; returns the size written."""

    def put_bytes(self, key: str, data: bytes) -> int:
        import io

        return self.put_file(key, io.BytesIO(data))

    @abc.abstractmethod
    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the object's bytes; raises ``ObjectNotFound``."""

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_bytes(key))

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """The object's size; raises ``ObjectNotFound``."""

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""

    def delete_prefix(self, prefix: str) -> None:
        for info in self.list(prefix):
            self.delete(info.key)

    @abc.abstractmethod
    def presigned_url(self, key: str, *, expires_s: int, base_url: str) -> str:
        """A short-lived download link; ``base_url`` is the API's public URL (used by local storage)."""

    def ping(self) -> None:  # noqa: B027 - optional: a backend without a cheap reachability check keeps this no-op
        """Raise if the backend is unreachable."""

    def describe(self, key: str) -> str:
        """Where a human finds the object (a path or an s3:// URL)."""
        return key
