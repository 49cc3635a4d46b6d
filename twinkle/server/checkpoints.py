"""Checkpoints and ``twinkle://`` URIs (http.md §8), stored through the platform's storage (``scheduler.storage``).

Keys: ``<tenant>/<run>/twinkle_metadata.json`` (the run) and ``<tenant>/<run>/<weights|sampler_weights>/<name>/``
(one PEFT folder plus ``checkpoint_metadata.json``), where ``<tenant>`` is the token's salted hash. A URI
``twinkle://<run>/<kind>/<name>`` is resolved only inside the caller's own tenant prefix, so a tenant can neither
name nor probe another tenant's checkpoints (404 either way). The model writes a checkpoint to a local scratch
folder and it is uploaded; loading downloads it into a local cache first. With ``LocalStorage`` that is a copy;
with S3 the same code serves any number of servers.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from scheduler.storage import LocalStorage, ObjectNotFound, S3Storage, Storage
from twinkle.server.errors import NotFound, UserError

__all__ = ["CheckpointStore", "check_name", "make_storage", "parse_uri"]

KINDS = ("weights", "sampler_weights")
_URI = re.compile(r"^twinkle://([^/]+)/(weights|sampler_weights)/([^/]+)$")


def check_name(value: str, what: str) -> str:
    """Path rules for names that become path segments: no empty, ``..``, NUL, ``~``, ``/`` or ``\\``."""
    if not isinstance(value, str) or not value or value in (".", "..") or any(c in value for c in "\0~/\\") \
            or ".." in value:
        raise UserError(400, f"Invalid {what}: {value!r}; use letters, digits, '-', '_' or '.' (no '/', '..', '~')")
    return value


def safe_name(value: str | None) -> str:
    """A checkpoint name as upstream makes it: ``[^\\w-]`` -> ``_``; none -> a timestamp."""
    if not value:
        return time.strftime("%Y%m%d_%H%M%S")
    check_name(value, "checkpoint name")
    return re.sub(r"[^\w.-]", "_", value)


def parse_uri(uri: str) -> tuple[str, str, str]:
    match = _URI.match(uri or "")
    if not match:
        raise UserError(400, f"not a checkpoint URI: {uri!r}; pass twinkle://<run>/weights/<name> as returned by "
                             f"save, or list your checkpoints with GET /api/v1/twinkle/training_runs")
    run, kind, name = match.groups()
    check_name(run, "training run id")
    check_name(name, "checkpoint name")
    return run, kind, name


def make_storage(save_dir: str, s3_bucket: str | None = None, **s3: Any) -> Storage:
    """S3 when a bucket is configured, else a local folder: the platform's two backends, nothing new."""
    if s3_bucket:
        return S3Storage(s3_bucket, **s3)
    return LocalStorage(save_dir, secret_key="twinkle-server")  # links are never signed here


class CheckpointStore:
    def __init__(self, storage: Storage, cache_dir: str | Path) -> None:
        self.storage = storage
        self.cache = Path(cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ runs

    def write_run(self, tenant: str, run: str, record: dict[str, Any]) -> None:
        record = {"training_run_id": run, "model_owner": tenant, "is_lora": True, "corrupted": False,
                  "last_request_time": time.time(), "last_checkpoint": None, "last_sampler_checkpoint": None,
                  **record}
        self.storage.put_bytes(f"{tenant}/{run}/twinkle_metadata.json", json.dumps(record).encode())

    def read_run(self, tenant: str, run: str) -> dict[str, Any]:
        check_name(run, "training run id")
        try:
            return json.loads(self.storage.get_bytes(f"{tenant}/{run}/twinkle_metadata.json"))
        except ObjectNotFound:
            raise NotFound(f"Training run {run} not found or access denied") from None

    def list_runs(self, tenant: str) -> list[dict[str, Any]]:
        runs = [json.loads(self.storage.get_bytes(o.key)) for o in self.storage.list(f"{tenant}/")
                if o.key.count("/") == 2 and o.key.endswith("/twinkle_metadata.json")]
        return sorted(runs, key=lambda r: r.get("last_request_time", 0), reverse=True)

    # ------------------------------------------------------------------ checkpoints

    def save(self, tenant: str, run: str, kind: str, name: str, folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Upload a checkpoint folder; returns its metadata with ``twinkle_path``."""
        prefix = f"{tenant}/{run}/{kind}/{name}/"
        uri = f"twinkle://{run}/{kind}/{name}"
        if kind == "sampler_weights":  # one current sampler export per run, as upstream
            self.storage.delete_prefix(f"{tenant}/{run}/sampler_weights/")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        meta = {"checkpoint_id": f"{kind}/{name}", "checkpoint_type": "training" if kind == "weights" else "sampler",
                "time": time.time(), "size_bytes": size, "public": False, "twinkle_path": uri, "is_lora": True,
                **meta}
        # metadata first (as upstream), so a listing never shows weights without it; a half-uploaded folder is
        # recognisable by a missing adapter_model.safetensors and refused by load
        self.storage.put_bytes(prefix + "checkpoint_metadata.json", json.dumps(meta).encode())
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                with path.open("rb") as fh:
                    self.storage.put_file(prefix + path.relative_to(folder).as_posix(), fh)
        run_meta = self.read_run(tenant, run)
        run_meta["last_request_time"] = time.time()
        run_meta["last_sampler_checkpoint" if kind == "sampler_weights" else "last_checkpoint"] = meta
        self.storage.put_bytes(f"{tenant}/{run}/twinkle_metadata.json", json.dumps(run_meta).encode())
        return meta

    def list(self, tenant: str, run: str) -> list[dict[str, Any]]:
        self.read_run(tenant, run)
        out = []
        for info in self.storage.list(f"{tenant}/{run}/"):
            if info.key.endswith("/checkpoint_metadata.json") and info.key.count("/") == 4:
                out.append(json.loads(self.storage.get_bytes(info.key)))
        return sorted(out, key=lambda m: m["time"])

    def _prefix(self, tenant: str, run: str, checkpoint_id: str) -> str:
        parts = checkpoint_id.split("/")
        if len(parts) != 2 or parts[0] not in KINDS:
            raise UserError(400, f"Invalid checkpoint id: {checkpoint_id!r}; use weights/<name> or "
                                 f"sampler_weights/<name>")
        check_name(run, "training run id")
        check_name(parts[1], "checkpoint name")
        prefix = f"{tenant}/{run}/{checkpoint_id}/"
        if not self.storage.exists(prefix + "checkpoint_metadata.json"):
            raise NotFound(f"Checkpoint {checkpoint_id} of run {run} not found or access denied")
        return prefix

    def delete(self, tenant: str, run: str, checkpoint_id: str) -> None:
        self.storage.delete_prefix(self._prefix(tenant, run, checkpoint_id))

    def metadata(self, tenant: str, uri: str) -> dict[str, Any]:
        run, kind, name = parse_uri(uri)
        prefix = self._prefix(tenant, run, f"{kind}/{name}")
        return json.loads(self.storage.get_bytes(prefix + "checkpoint_metadata.json"))

    def fetch(self, tenant: str, uri: str) -> Path:
        """A local folder holding the checkpoint ``uri`` of the caller (downloaded into the cache)."""
        run, kind, name = parse_uri(uri)
        prefix = self._prefix(tenant, run, f"{kind}/{name}")
        objects = self.storage.list(prefix)
        if not any(o.key.endswith("/adapter_model.safetensors") for o in objects):
            raise NotFound(f"Checkpoint {uri} has no weights (an interrupted save?); save it again")
        target = self.cache / tenant / run / kind / name
        tmp = Path(tempfile.mkdtemp(dir=self.cache, prefix=".fetch-"))
        for info in objects:
            dest = tmp / info.key[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as fh:
                for chunk in self.storage.iter_bytes(info.key):
                    fh.write(chunk)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target
