"""Bundle a script's folder as a zip for ``POST /api/v1/jobs``.

Left out: ``.git``, ``__pycache__``, virtual environments, ``output``/``outputs``, weight files
(``*.pt``, ``*.bin``, ``*.safetensors``, ...) over ``max_weight_mb``, and whatever ``.twinkleignore`` lists
(one glob per line, ``#`` comments; a pattern with a ``/`` matches the path from the bundle root, else any name).
"""

from __future__ import annotations

import fnmatch
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_EXCLUDES", "Bundle", "BundleError", "BundleTooLarge", "make_bundle"]

DEFAULT_EXCLUDES = (
    ".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".env", ".tox", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".ipynb_checkpoints", "output", "outputs", ".DS_Store", "*.pyc",
)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".gguf", ".onnx", ".h5")


class BundleError(Exception):
    """The script cannot be bundled; the message says what to do."""


class BundleTooLarge(BundleError):
    def __init__(self, size: int, limit: int, largest: list[tuple[str, int]]):
        self.size, self.limit, self.largest = size, limit, largest
        files = ", ".join(f"{p} ({_mb(s)})" for p, s in largest)
        super().__init__(
            f"the bundle is over the {_mb(limit)} limit ({_mb(size)} of files before compression). "
            f"Largest files: {files}. "
            "Add them to .twinkleignore (the job can download data and models itself) or move them out of the folder."
        )


def _mb(size: int) -> str:
    return f"{size / 1024**2:.1f} MB"


@dataclass
class Bundle:
    data: bytes
    entrypoint: str
    files: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)


def _ignore_patterns(root: Path) -> list[str]:
    path = root / ".twinkleignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _ignored(rel: str, name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatch(rel, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatch(name, pattern):
            return True
    return False


def make_bundle(script: str | Path, *, max_mb: float = 100.0, max_weight_mb: float = 1.0) -> Bundle:
    """Zip the folder that holds ``script``; the script's path inside it is the entrypoint.

    Raises:
        BundleError: the script is missing or not a ``.py`` file.
        BundleTooLarge: the zip is over ``max_mb``; names the largest files.
    """
    script = Path(script)
    if not script.exists():
        raise BundleError(f"{script} does not exist")
    if script.is_dir() or script.suffix != ".py":
        raise BundleError(f"{script} is not a Python script: twinkle-submit runs a .py file (e.g. train.py)")
    root = script.resolve().parent
    patterns = list(DEFAULT_EXCLUDES) + _ignore_patterns(root)
    weight_limit = int(max_weight_mb * 1024**2)
    files: list[tuple[str, Path, int]] = []
    excluded: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            rel = (base / d).relative_to(root).as_posix()
            if _ignored(rel, d, patterns):
                excluded.append(rel + "/")
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_file():
                excluded.append(rel)
                continue
            size = path.stat().st_size
            if _ignored(rel, name, patterns) or (name.endswith(WEIGHT_SUFFIXES) and size > weight_limit):
                excluded.append(rel)
                continue
            files.append((rel, path, size))
    limit = int(max_mb * 1024**2)
    raw_total = sum(size for _, _, size in files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, path, _ in files:
            zf.write(path, rel)
            # stop early: compressing gigabytes only to refuse them wastes minutes
            if buffer.tell() > limit:
                break
    data = buffer.getvalue()
    if len(data) > limit:
        largest = sorted(((rel, size) for rel, _, size in files), key=lambda x: -x[1])[:5]
        raise BundleTooLarge(raw_total, limit, largest)
    return Bundle(data=data, entrypoint=script.resolve().relative_to(root).as_posix(),
                  files=[rel for rel, _, _ in files], excluded=excluded)
