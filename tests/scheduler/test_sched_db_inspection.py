"""Migrations produce the models' schema (SQLite and PostgreSQL); static script inspection; settings checks."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError

from scheduler.db import Base
from scheduler.errors import InvalidRequest
from scheduler.services.script_inspection import inspect_source, read_bundle
from scheduler.settings import Settings


def test_migration_matches_the_models(scheduler_db_url):
    engine = sa.create_engine(scheduler_db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        assert ctx.get_current_revision() == _head()
    engine.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    from scheduler.db.session import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_workers_registered_before_0002_count_as_unsandboxed(tmp_path):
    """Upgrading a database that has workers from before the isolation column gives them 'none'."""
    from scheduler.db import migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0001")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO users (id, name, created_at) VALUES ('u1', 'donor', '2026-01-01 00:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO api_tokens (id, token_hash, kind, created_at) VALUES ('t1', 'h', 'worker', '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO workers (id, token_id, name, hostname, state, device_groups, registered_at, "
            "last_heartbeat_at, lease_expires_at, jobs_run, gpu_seconds) VALUES ('w1', 't1', 'old', 'h', 'live', "
            "'[]', '2026-01-01', '2026-01-01', '2026-01-01', 0, 0.0)"
        )
    migrate(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT isolation FROM workers WHERE id = 'w1'").scalar() == "none"
    engine.dispose()


def test_sqlite_runs_wal_with_foreign_keys(tmp_path):
    from scheduler.db import Database, migrate

    url = f"sqlite:///{tmp_path / 'x' / 't.db'}"
    migrate(url)
    db = Database(url)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()


def test_cli_migrate(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from scheduler.cli import app

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("TWINKLE_SCHEDULER_DATABASE_URL", url)
    r = CliRunner().invoke(app, ["migrate"])
    assert r.exit_code == 0 and "latest schema" in r.output
    r = CliRunner().invoke(app, ["create-user", "alice", "-q"])
    assert r.exit_code == 0 and r.output.strip().startswith("twk_u_")
    r = CliRunner().invoke(app, ["create-worker-token", "lab", "-q"])
    assert r.exit_code == 0 and r.output.strip().startswith("twk_w_")


def test_reads_literal_device_groups_and_initialize():
    src = """
import twinkle
from twinkle import DeviceGroup
groups = [DeviceGroup(name='actor', ranks=[0, 1, 2, 3], device_type='GPU'),
          DeviceGroup('ref', 2, 'cuda')]
twinkle.initialize(mode='ray', nproc_per_node=4, groups=groups)
"""
    got = inspect_source(src)
    assert got.device_groups == [
        {"name": "actor", "ranks": 4, "device_type": "GPU", "min_memory_gb": 0.0},
        {"name": "ref", "ranks": 2, "device_type": "cuda", "min_memory_gb": 0.0},
    ]
    assert got.nproc_per_node == 4 and got.mode == "ray" and got.warnings == []


def test_non_literal_arguments_warn_and_default():
    src = """
import torch
from twinkle import DeviceGroup, initialize
n = compute_ranks()
g = DeviceGroup(name='default', ranks=n, device_type=pick_device())
initialize(nproc_per_node=n)
"""
    got = inspect_source(src, "t.py")
    assert got.device_groups == [{"name": "default", "ranks": 1, "device_type": "any", "min_memory_gb": 0.0}]
    assert any("t.py:5: DeviceGroup ranks is not a literal" in w for w in got.warnings)
    assert any("device_type is not a literal" in w for w in got.warnings)
    assert any("nproc_per_node is not a literal" in w for w in got.warnings)


def test_module_constants_fold_and_a_run_time_choice_of_device_matches_any():
    src = """
import torch
from twinkle import DeviceGroup, initialize
n = 8
g = DeviceGroup(name='default', ranks=n, device_type='cuda' if torch.cuda.is_available() else 'cpu')
initialize(nproc_per_node=n)
"""
    got = inspect_source(src, "t.py")
    assert got.device_groups == [{"name": "default", "ranks": 8, "device_type": "any", "min_memory_gb": 0.0}]
    assert got.warnings == [] and got.nproc_per_node == 8


def test_no_device_group_requests_one_rank_and_never_runs_the_script():
    got = inspect_source("raise SystemExit('must not run')\n")
    assert got.device_groups[0]["ranks"] == 1 and "no DeviceGroup" in got.warnings[0]
    big = inspect_source("from twinkle import DeviceGroup\nDeviceGroup('default', 16, 'cuda')\nimport twinkle\n"
                         "twinkle.initialize('ray', 8)\n")
    assert any("nproc_per_node=8" in w for w in big.warnings)


def test_syntax_error_names_the_line():
    with pytest.raises(InvalidRequest) as exc:
        inspect_source("x = 1\ny = (\n", "train.py")
    assert exc.value.code == "not_python" and "line 2" in exc.value.message


def test_bundle_reading_problems():
    assert read_bundle("t.py", b"\xff\xfe", None)[1][0][1].endswith("upload a Python script")
    assert read_bundle("t.py", b"1", "other.py")[1][0][0] == "entrypoint"
    bundle, problems = read_bundle("sub/dir/t.py", b"print(1)", None)
    assert problems == [] and bundle.entrypoint == "t.py"


def test_settings_refuse_bad_values(monkeypatch):
    with pytest.raises(ValidationError, match="changethis"):
        Settings(environment="production")
    with pytest.raises(ValidationError, match="LEASE_S"):
        Settings(lease_s=5, heartbeat_interval_s=10)
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/1")
    assert Settings().effective_redis_url == "redis://elsewhere:6379/1"
    monkeypatch.setenv("TWINKLE_SCHEDULER_REDIS_URL", "redis://mine:6379/2")
    assert Settings().effective_redis_url == "redis://mine:6379/2"
    assert Settings(max_bundle_mb=2).max_bundle_bytes == 2 * 1024 * 1024
