"""The worker unpacks a bundle under the same rules the API checks at submit (``contract.archive``)."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from contract.archive import ArchiveLimits, ArchiveRejected, extract, scan
from worker.tasks import BundleError, unpack_bundle


def write_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def test_a_normal_bundle_unpacks(tmp_path):
    z = write_zip(tmp_path / "b.zip", [("train.py", b"print(1)\n"), ("pkg/util.py", b"X = 1\n"), ("pkg/", b"")])
    unpack_bundle(z, tmp_path / "code", "train.py")
    assert (tmp_path / "code" / "train.py").read_bytes() == b"print(1)\n"
    assert (tmp_path / "code" / "pkg" / "util.py").read_bytes() == b"X = 1\n"


def test_a_zip_bomb_never_reaches_the_disk(tmp_path):
    # 2 GB of zeros would be ~2 MB zipped; 200 MB keeps the test fast and is refused by the same rule
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("data.bin", "w") as f:
            chunk = bytes(1 << 20)
            for _ in range(200):
                f.write(chunk)
        zf.writestr("train.py", b"print(1)\n")
    assert z.stat().st_size < 1 << 20
    with pytest.raises(BundleError, match="max_compression_ratio"):
        unpack_bundle(z, tmp_path / "code", "train.py")
    assert not (tmp_path / "code" / "data.bin").exists()


def test_symlinks_and_special_files_are_never_made(tmp_path):
    link = zipfile.ZipInfo("evil")
    link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
    z = write_zip(tmp_path / "l.zip", [("train.py", b"x"), (link, b"/etc/passwd")])
    with pytest.raises(BundleError, match="symlink"):
        unpack_bundle(z, tmp_path / "code", "train.py")
    assert not (tmp_path / "code" / "evil").exists()
    dev = zipfile.ZipInfo("dev")
    dev.create_system, dev.external_attr = 3, (stat.S_IFCHR | 0o644) << 16
    z = write_zip(tmp_path / "d.zip", [("train.py", b"x"), (dev, b"")])
    with pytest.raises(BundleError, match="special_file"):
        unpack_bundle(z, tmp_path / "code2", "train.py")


def test_paths_escaping_the_folder_are_refused(tmp_path):
    z = write_zip(tmp_path / "p.zip", [("train.py", b"x"), ("../../outside.py", b"x")])
    with pytest.raises(BundleError, match="unsafe_path"):
        unpack_bundle(z, tmp_path / "code", "train.py")
    assert not (tmp_path / "outside.py").exists()


def test_a_bundle_larger_than_the_free_disk_is_refused(tmp_path):
    z = write_zip(tmp_path / "b.zip", [("train.py", b"print(1)\n"), ("data", os.urandom(1 << 16))])
    free = __import__("shutil").disk_usage(tmp_path).free
    with pytest.raises(ArchiveRejected) as exc:
        extract(z, tmp_path / "code", reserve_bytes=free)  # leaves no room for the declared size
    assert exc.value.rule == "disk_space"


def test_limits_are_streaming_counts_not_trust_in_the_header(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("train.py", b"print(1)\n")
        zf.writestr("data.bin", b"A" * 5000)
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02")  # the central directory entry of data.bin claims 10 bytes
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    z = tmp_path / "lie.zip"
    z.write_bytes(bytes(data))
    with pytest.raises(ArchiveRejected):
        scan(z)
    with pytest.raises(BundleError):
        unpack_bundle(z, tmp_path / "code", "train.py")
    assert not (tmp_path / "code" / "data.bin").exists() or (tmp_path / "code" / "data.bin").stat().st_size <= 10


def test_the_same_rules_and_names_on_both_sides(tmp_path):
    limits = ArchiveLimits(max_files=3)
    z = write_zip(tmp_path / "m.zip", [(f"f{i}", b"x") for i in range(4)])
    with pytest.raises(ArchiveRejected) as api_side:
        scan(z, limits)
    with pytest.raises(ArchiveRejected) as worker_side:
        extract(z, tmp_path / "code", limits)
    assert api_side.value.rule == worker_side.value.rule == "max_files"
