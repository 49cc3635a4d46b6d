"""Hostile submissions: the script reader and the explicit request share one set of limits, the reader has
size and nesting bounds, zip bundles are held to the archive rules, and nothing is stored on refusal."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest
import sqlalchemy as sa

from scheduler.db import JobModel, new_id, utcnow
from scheduler.errors import InvalidRequest
from scheduler.services.script_inspection import inspect_source
from scheduler.testing import auth, create_user, submit_script


def stored_nothing(env) -> bool:
    with env.rt.db.session() as s:
        n_jobs = s.scalar(sa.select(sa.func.count()).select_from(JobModel))
    files = [p for p in (env.tmp_path / "storage").rglob("*") if p.is_file()]
    return n_jobs == 0 and files == []


def group_script(*calls: str) -> str:
    return "from twinkle import DeviceGroup\n" + "\n".join(calls) + "\n"


@pytest.mark.parametrize(
    ("script", "field"),
    [
        (group_script("DeviceGroup(name='default', ranks=10**9, device_type='cuda')"), None),
        # folded statically (a constant condition), so held to the same limits as a literal
        (group_script("DeviceGroup(name='default', ranks=10**9 if False else 1000000000, device_type='cuda')"), "ranks"),
        (group_script("DeviceGroup(name='default', ranks=1000000000, device_type='cuda')"), "ranks"),
        (group_script(f"DeviceGroup(name={'n' * 129!r}, ranks=1, device_type='cuda')"), "name"),
        (group_script(f"DeviceGroup(name='a', ranks=1, device_type={'x' * 33!r})"), "device_type"),
        (group_script(*[f"DeviceGroup(name='g{i}', ranks=1, device_type='cpu')" for i in range(65)]), "device_groups"),
    ],
)
def test_script_declarations_over_the_request_limits_are_422_and_store_nothing(scheduler_env, script, field):
    env, c = scheduler_env, scheduler_env.client
    token = create_user(c, "alice")
    r = submit_script(c, token, script)
    if field is None:  # a non-literal ranks expression: read as 1 with a warning, accepted
        assert r.status_code == 201, r.text
        return
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert any(k.startswith("file.device_groups") for k in err["fields"]), err
    assert field in r.text and "train.py declares" in r.text
    assert stored_nothing(env)
    # the listing of that user keeps working (the job was never stored)
    assert c.get("/api/v1/jobs", headers=auth(token)).status_code == 200
    # the static inspection route answers the same 422, not a 500
    r = c.post("/api/v1/scripts/inspect", files={"file": ("train.py", script.encode())}, headers=auth(token))
    assert r.status_code == 422, r.text


def test_the_same_limits_hold_for_the_explicit_request(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    for bad in (
        {"device_groups": [{"ranks": 10**9}]},
        {"device_groups": [{"name": "n" * 129}]},
        {"device_groups": [{"device_type": "x" * 33}]},
        {"device_groups": [{"name": f"g{i}"} for i in range(65)]},
    ):
        r = submit_script(c, token, "print(1)\n", request=bad)
        assert r.status_code == 422, (bad, r.text)
    # 1e999 parses to infinity: a memory request nothing can satisfy is refused, not queued forever
    r = c.post(
        "/api/v1/jobs",
        files={"file": ("train.py", b"print(1)\n")},
        data={"request": '{"device_groups": [{"min_memory_gb": 1e999}]}'},
        headers=auth(token),
    )
    assert r.status_code == 422 and "request.device_groups.0.min_memory_gb" in r.json()["error"]["fields"], r.text
    assert stored_nothing(scheduler_env)


def test_deep_nesting_and_huge_sources_are_422_not_500(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    deep = "x = " + "-" * 200_000 + "1\n"
    r = submit_script(c, token, deep)
    assert r.status_code == 422 and "nests expressions too deeply" in r.json()["error"]["message"], r.text
    # nesting the parser accepts but literal_eval cannot follow is read as a non-literal, with a warning
    r = submit_script(c, token, group_script("DeviceGroup(name='d', ranks=" + "-" * 3000 + "1, device_type='cpu')"))
    assert r.status_code in (201, 422) and r.status_code != 500, r.text
    # a source over the reader's bound (reachable when MAX_BUNDLE_MB allows it) is refused before parsing
    with pytest.raises(InvalidRequest, match="a script may be at most 2 MB"):
        inspect_source("# " + "x" * (3 * 1024 * 1024) + "\n")
    r = c.post("/api/v1/scripts/inspect", files={"file": ("train.py", deep.encode())}, headers=auth(token))
    assert r.status_code == 422, r.text


def test_a_stored_job_with_an_odd_request_never_breaks_the_listing(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    token = create_user(c, "alice")
    ok = submit_script(c, token, "print(1)\n").json()
    with env.rt.db.session() as s:  # a row written before the limits existed
        row = s.get(JobModel, ok["id"])
        now = utcnow()
        for request in ({"device_groups": [{"name": "x" * 500, "ranks": 10**9, "device_type": "y" * 99,
                                            "min_memory_gb": 0.0}]}, {"weird": True}, None):
            s.add(JobModel(
                id=new_id(), user_id=row.user_id, name="old", state="queued", entrypoint="train.py",
                request=request, warnings=[], bundle_key=row.bundle_key, bundle_size=1, attempt=0,
                created_at=now, queued_at=now, updated_at=now,
            ))
        s.commit()
    r = c.get("/api/v1/jobs", headers=auth(token))
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 4
    assert sum("could not be read" in " ".join(j["warnings"]) for j in items) == 2
    assert any(j["request"]["device_groups"] and j["request"]["device_groups"][0]["ranks"] == 10**9 for j in items)
    for j in items:
        assert c.get(f"/api/v1/jobs/{j['id']}", headers=auth(token)).status_code == 200


# ---------------------------------------------------------------- archives


def zip_bytes(members: list[tuple[zipfile.ZipInfo | str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def post_zip(c, token: str, data: bytes):
    return c.post("/api/v1/jobs", files={"file": ("b.zip", data)}, headers=auth(token))


def test_zip_bomb_and_symlink_are_refused_at_submit_naming_the_rule(scheduler_env):
    env, c = scheduler_env, scheduler_env.client
    token = create_user(c, "alice")
    bomb = zip_bytes([("train.py", b"print(1)\n"), ("data.bin", bytes(64 << 20))])  # 64 MB of zeros, ~64 KB zipped
    assert len(bomb) < 1 << 20
    r = post_zip(c, token, bomb)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "archive_rejected" and "max_compression_ratio" in err["message"] and "data.bin" in err["message"]

    r = post_zip(c, token, zip_bytes([("train.py", b"print(1)\n"), (symlink_info("link"), b"/etc/passwd")]))
    assert r.status_code == 422 and "symlink" in r.json()["error"]["message"], r.text

    fifo = zipfile.ZipInfo("pipe")
    fifo.create_system, fifo.external_attr = 3, (stat.S_IFIFO | 0o644) << 16
    r = post_zip(c, token, zip_bytes([("train.py", b"print(1)\n"), (fifo, b"")]))
    assert r.status_code == 422 and "special_file" in r.json()["error"]["message"], r.text
    assert stored_nothing(env)


class TestLimitsFromSettings:
    @pytest.fixture()
    def scheduler_overrides(self):
        return {"max_bundle_mb": 5.0, "max_bundle_files": 5, "max_bundle_file_mb": 0.5, "max_unpacked_mb": 1.0}


    def test_file_count_file_size_and_total_limits_come_from_settings(self, scheduler_env):
        env, c = scheduler_env, scheduler_env.client
        token = create_user(c, "alice")
        rnd = __import__("os").urandom
        r = post_zip(c, token, zip_bytes([("train.py", b"print(1)\n")] + [(f"f{i}", b"x") for i in range(5)]))
        assert r.status_code == 422 and "max_files" in r.json()["error"]["message"], r.text
        r = post_zip(c, token, zip_bytes([("train.py", b"print(1)\n"), ("big", rnd(600_000))]))
        assert r.status_code == 422 and "max_file_bytes" in r.json()["error"]["message"], r.text
        r = post_zip(c, token, zip_bytes([("train.py", b"x=1\n"), ("a", rnd(400_000)), ("b", rnd(400_000)), ("c", rnd(400_000))]))
        assert r.status_code == 422 and "max_total_bytes" in r.json()["error"]["message"], r.text
        assert stored_nothing(env)
        r = post_zip(c, token, zip_bytes([("train.py", b"print(1)\n"), ("a", rnd(400_000))]))
        assert r.status_code == 201, r.text


def test_a_member_lying_about_its_size_is_refused(scheduler_env):
    c = scheduler_env.client
    token = create_user(c, "alice")
    data = bytearray(zip_bytes([("train.py", b"print(1)\n"), ("data.bin", b"A" * 5000)], zipfile.ZIP_STORED))
    # shrink the declared size of data.bin in its central directory entry: it claims 10 bytes, holds 5000
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    r = post_zip(c, token, bytes(data))
    assert r.status_code == 422, r.text
    assert "bad_zip" in r.json()["error"]["message"] or "max_" in r.json()["error"]["message"]
