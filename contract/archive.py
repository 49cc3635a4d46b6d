"""Limits on job bundles (zip archives), checked the same way at submit (the API) and at unpack (the worker).

A bundle is untrusted input on both sides: a 1 MB zip can declare a 1 GB member, a member can be a symbolic
link or a device node, a name can climb out of the job folder. ``check_members`` refuses such an archive
from its central directory alone (cheap, before any byte is inflated); ``scan`` and ``extract`` then inflate
member by member in 1 MiB chunks and count what really comes out, so a member that lies about its size is
cut off at the limit. Every refusal is an ``ArchiveRejected`` whose ``rule`` names the limit that failed.

Rules (``ArchiveRejected.rule``): ``max_files``, ``max_file_bytes``, ``max_total_bytes``,
``max_compression_ratio``, ``unsafe_path``, ``symlink``, ``special_file``, ``bad_zip``, ``disk_space``.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = ["DEFAULT_LIMITS", "ArchiveLimits", "ArchiveRejected", "check_members", "extract", "scan"]

CHUNK = 1 << 20
RATIO_FLOOR_BYTES = 1 << 20  # members below 1 MiB may compress well (source, zeros) without being bombs


class ArchiveRejected(ValueError):
    """The archive breaks ``rule``; ``member`` names the offending entry when there is one."""

    def __init__(self, rule: str, message: str, member: str | None = None):
        super().__init__(message)
        self.rule, self.message, self.member = rule, message, member


@dataclass(frozen=True)
class ArchiveLimits:
    """Args:
        max_files: entries in the archive (folders included).
        max_file_bytes: uncompressed size of any one member.
        max_total_bytes: uncompressed size of all members together.
        max_compression_ratio: uncompressed / compressed size, per member over 1 MiB and for the whole archive.
    """

    max_files: int = 10_000
    max_file_bytes: int = 512 << 20
    max_total_bytes: int = 1 << 30
    max_compression_ratio: float = 100.0


DEFAULT_LIMITS = ArchiveLimits()


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not (
        name.startswith("/") or "\\" in name or "\x00" in name or ".." in p.parts
        or (p.parts and p.parts[0].endswith(":")) or len(name) > 1024
    )


def _file_type(info: zipfile.ZipInfo) -> int:
    """The Unix file type bits (0 when the archive was not made on Unix or carries no mode)."""
    return stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0


def check_members(infos: Iterable[zipfile.ZipInfo], limits: ArchiveLimits = DEFAULT_LIMITS) -> int:
    """Refuse the archive from its central directory; returns the declared total uncompressed size."""
    total = compressed = 0
    for count, info in enumerate(infos, 1):
        if count > limits.max_files:
            raise ArchiveRejected("max_files", f"the bundle has more than {limits.max_files} entries")
        name = info.filename
        if not _safe_name(name):
            raise ArchiveRejected("unsafe_path", f"bundle entry {name[:200]!r} points outside the job folder", name)
        kind = _file_type(info)
        if kind == stat.S_IFLNK:
            raise ArchiveRejected("symlink", f"bundle entry {name!r} is a symbolic link; put the file itself in", name)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveRejected("special_file", f"bundle entry {name!r} is not a regular file or folder", name)
        if info.file_size > limits.max_file_bytes:
            raise ArchiveRejected(
                "max_file_bytes",
                f"bundle entry {name!r} inflates to {_mb(info.file_size)}; one file may be at most "
                f"{_mb(limits.max_file_bytes)} (fetch large data at run time instead)",
                name,
            )
        inflates = info.file_size > limits.max_compression_ratio * max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and inflates:
            raise ArchiveRejected(
                "max_compression_ratio",
                f"bundle entry {name!r} inflates {info.file_size / max(info.compress_size, 1):.0f}x "
                f"(at most {limits.max_compression_ratio:g}x)",
                name,
            )
        total += info.file_size
        compressed += info.compress_size
        if total > limits.max_total_bytes:
            raise ArchiveRejected(
                "max_total_bytes",
                f"the bundle inflates to more than {_mb(limits.max_total_bytes)}; leave data and checkpoints out",
            )
    if total > RATIO_FLOOR_BYTES and total > limits.max_compression_ratio * max(compressed, 1):
        raise ArchiveRejected(
            "max_compression_ratio",
            f"the bundle inflates {total / max(compressed, 1):.0f}x (at most {limits.max_compression_ratio:g}x)",
        )
    return total


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes] | None, budget: int,
                 limits: ArchiveLimits) -> int:
    """Inflate one member in chunks into ``out`` (or nowhere), refusing more than declared or allowed."""
    n = 0
    cap = min(info.file_size, limits.max_file_bytes, budget)
    with zf.open(info) as src:
        while chunk := src.read(CHUNK):
            n += len(chunk)
            if n > cap:
                rule = "max_total_bytes" if budget < min(info.file_size, limits.max_file_bytes) else "max_file_bytes"
                raise ArchiveRejected(rule, f"bundle entry {info.filename!r} inflates past its limit", info.filename)
            if out is not None:
                out.write(chunk)
    return n


def _open(source: str | Path | IO[bytes]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveRejected(
            "bad_zip", f"the bundle is not a valid zip archive ({exc}); re-create it with `zip -r`"
        ) from exc


def scan(source: str | Path | IO[bytes], limits: ArchiveLimits = DEFAULT_LIMITS) -> list[str]:
    """Check the whole archive as the worker will unpack it, inflating every member (bounded memory, CRCs
    checked) without writing anything. Returns the member names. CPU-bound: call it off the event loop."""
    with _open(source) as zf:
        infos = zf.infolist()
        check_members(infos, limits)
        left = limits.max_total_bytes
        try:
            for info in infos:
                if not info.is_dir():
                    left -= _copy_member(zf, info, None, left, limits)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError,
                ValueError) as exc:
            if isinstance(exc, ArchiveRejected):
                raise
            raise ArchiveRejected("bad_zip", f"the bundle could not be inflated ({exc})") from exc
        return [i.filename for i in infos]


def extract(
    source: str | Path, dest: Path, limits: ArchiveLimits = DEFAULT_LIMITS, *, reserve_bytes: int = 256 << 20
) -> int:
    """Unpack into ``dest`` under the same rules, and only if the declared size fits on the disk with
    ``reserve_bytes`` to spare. Links and special files are never created. Returns the bytes written."""
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)
    with _open(source) as zf:
        infos = zf.infolist()
        declared = check_members(infos, limits)
        free = shutil.disk_usage(root).free
        if declared + reserve_bytes > free:
            raise ArchiveRejected(
                "disk_space", f"the bundle needs {_mb(declared)} but the work folder has {_mb(free)} free"
            )
        left = limits.max_total_bytes
        try:
            for info in infos:
                target = (root / info.filename).resolve()
                if not target.is_relative_to(root):
                    raise ArchiveRejected(
                        "unsafe_path", f"bundle entry {info.filename!r} points outside the job folder"
                    )
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    left -= _copy_member(zf, info, out, left, limits)
        except (zipfile.BadZipFile, NotImplementedError, EOFError, ValueError) as exc:
            if isinstance(exc, ArchiveRejected):
                raise
            raise ArchiveRejected("bad_zip", f"the bundle could not be inflated ({exc})") from exc
    return limits.max_total_bytes - left
