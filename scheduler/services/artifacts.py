"""Artifacts (checkpoints and other files) a job's attempts uploaded, one by one or a folder as a streamed zip."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from contract.errors import ErrorCode
from scheduler.db import ArtifactModel, UserModel
from scheduler.errors import NotFound
from scheduler.services.attempts import check_artifact_path
from scheduler.services.jobs import get_job
from scheduler.storage import Storage


def list_artifacts(session: Session, job_id: str) -> list[ArtifactModel]:
    return list(
        session.scalars(
            sa.select(ArtifactModel)
            .where(ArtifactModel.job_id == job_id)
            .order_by(ArtifactModel.attempt, ArtifactModel.path)
        )
    )


def job_artifacts(session: Session, user: UserModel, job_id: str) -> list[ArtifactModel]:
    """The files a job of ``user`` uploaded (another user's job is 404)."""
    job = get_job(session, user, job_id)
    return list(list_artifacts(session, job.id))


@dataclass
class ZipPlan:
    """The files of one checkpoint folder (or a whole attempt) to stream as one zip, and its file name."""

    attempt: int
    filename: str
    files: list[tuple[str, str]]  # (name inside the zip, storage key)


def zip_plan(session: Session, user: UserModel, job_id: str, attempt: int | None, folder: str | None) -> ZipPlan:
    """Choose what ``GET /jobs/{id}/artifacts/zip`` sends: ``attempt`` (default: the latest with files) and the
    files under ``folder`` (``output/last-checkpoint``; default: every file of the attempt). Names in the zip
    start at the folder's own name (``last-checkpoint/...``), or at ``output/`` without a folder."""
    rows = job_artifacts(session, user, job_id)
    if not rows:
        raise NotFound(f"job {job_id} has no artifacts (yet)", code=ErrorCode.DOWNLOAD_NOT_FOUND)
    chosen = attempt if attempt is not None else max(r.attempt for r in rows)
    rows = [r for r in rows if r.attempt == chosen]
    if not rows:
        raise NotFound(f"attempt {chosen} of job {job_id} has no artifacts", code=ErrorCode.DOWNLOAD_NOT_FOUND)
    base = ""
    if folder:
        folder = check_artifact_path(folder.strip("/"))
        base = str(PurePosixPath(folder).parent)
        base = "" if base == "." else base + "/"
        picked = [r for r in rows if r.path.startswith(folder + "/")]
        if not picked:
            folders = sorted({"/".join(r.path.split("/")[:2]) for r in rows if r.path.count("/") >= 2})
            raise NotFound(
                f"attempt {chosen} of job {job_id} has no folder {folder!r}; its folders: "
                f"{', '.join(folders) or 'none'}",
                code=ErrorCode.DOWNLOAD_NOT_FOUND, fields={"folder": "no such folder"},
            )
        rows = picked
    stem = PurePosixPath(folder).name if folder else f"attempt-{chosen}"
    return ZipPlan(chosen, f"{job_id}-{stem}.zip", [(r.path[len(base):], r.key) for r in rows])


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink whose bytes the zip generator hands on as they come."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.chunks.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def stream_zip(storage: Storage, files: list[tuple[str, str]]) -> Iterator[bytes]:
    """The zip of ``files`` (name, storage key), produced while reading: memory stays at about one storage chunk
    whatever the size (stored, not deflated: checkpoints are weights that barely compress; zip64 for > 4 GiB)."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, key in files:
            info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as dest:
                for chunk in storage.iter_bytes(key):
                    dest.write(chunk)
                    if data := pipe.take():
                        yield data
            if data := pipe.take():
                yield data
    if data := pipe.take():
        yield data
