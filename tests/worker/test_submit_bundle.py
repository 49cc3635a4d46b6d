"""twinkle-submit's bundler: what goes in, what stays out, and the size limit's message."""

from __future__ import annotations

import io
import zipfile

import pytest

from submit.bundle import BundleError, BundleTooLarge, make_bundle


def names(bundle) -> set[str]:
    return set(zipfile.ZipFile(io.BytesIO(bundle.data)).namelist())


def test_bundles_the_scripts_folder_without_the_usual_junk(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("{}\n")
    for junk in (".git/HEAD", "__pycache__/x.pyc", ".venv/bin/python", "output/checkpoint-1/a.json", "sub/__pycache__/y.pyc"):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_text("x")
    (tmp_path / "small.safetensors").write_bytes(b"0" * 100)
    (tmp_path / "big.pt").write_bytes(b"0" * (2 * 1024 * 1024))
    bundle = make_bundle(tmp_path / "train.py")
    assert bundle.entrypoint == "train.py"
    assert names(bundle) == {"train.py", "data/rows.jsonl", "small.safetensors"}
    assert "big.pt" in bundle.excluded and ".git/" in bundle.excluded


def test_twinkleignore_patterns(tmp_path):
    (tmp_path / "train.py").write_text("")
    (tmp_path / ".twinkleignore").write_text("# comments are fine\n*.csv\ndata/raw/\nnotes.md\n")
    for f in ("a.csv", "data/raw/x.txt", "data/keep.txt", "notes.md", "docs/notes.md"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    assert names(make_bundle(tmp_path / "train.py")) == {"train.py", ".twinkleignore", "data/keep.txt"}


def test_non_python_file_is_refused(tmp_path):
    (tmp_path / "train.sh").write_text("echo")
    with pytest.raises(BundleError, match="not a Python script"):
        make_bundle(tmp_path / "train.sh")
    with pytest.raises(BundleError, match="does not exist"):
        make_bundle(tmp_path / "missing.py")


def test_over_the_limit_names_the_largest_files(tmp_path):
    import os

    (tmp_path / "train.py").write_text("")
    (tmp_path / "huge.bin.data").write_bytes(os.urandom(3 * 1024 * 1024))  # random bytes do not compress
    (tmp_path / "medium.npy").write_bytes(os.urandom(1024 * 1024))
    with pytest.raises(BundleTooLarge) as info:
        make_bundle(tmp_path / "train.py", max_mb=2)
    message = str(info.value)
    assert "huge.bin.data (3.0 MB)" in message and "medium.npy" in message
    assert message.index("huge.bin.data") < message.index("medium.npy")
    assert ".twinkleignore" in message and "2.0 MB limit" in message
