"""Local-folder storage, the embedded default; downloads go through ``GET /api/v1/downloads/{signed}``."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from itsdangerous import BadSignature, URLSafeSerializer

from scheduler.storage.base import CHUNK, ObjectInfo, ObjectNotFound, Storage, check_key

_SALT = "twinkle-download"


class LocalStorage(Storage):
    def __init__(self, root: str | Path, secret_key: str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._signer = URLSafeSerializer(secret_key, salt=_SALT)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, fileobj: BinaryIO) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename, so a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := fileobj.read(CHUNK):
                    out.write(chunk)
                    size += len(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        with path.open("rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        target = self.root / prefix.strip("/")
        if target.is_dir() and target != self.root:
            shutil.rmtree(target, ignore_errors=True)
        else:
            super().delete_prefix(prefix)

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".upload-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(ObjectInfo(key, path.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def path_of(self, key: str) -> Path:
        return self._path(key)

    def sign(self, key: str, expires_s: int) -> str:
        return self._signer.dumps({"k": check_key(key), "e": int(time.time()) + expires_s})

    def unsign(self, signed: str) -> str:
        """The key behind a download link; raises ``ObjectNotFound`` if forged or expired."""
        try:
            data = self._signer.loads(signed)
        except BadSignature as exc:
            raise ObjectNotFound("download link is invalid") from exc
        if not isinstance(data, dict) or int(data.get("e", 0)) < time.time():
            raise ObjectNotFound("download link has expired; list the artifacts again for a fresh one")
        return check_key(str(data["k"]))

    def presigned_url(self, key: str, *, expires_s: int, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/api/v1/downloads/{self.sign(key, expires_s)}"

    def describe(self, key: str) -> str:
        return str(self._path(key))
