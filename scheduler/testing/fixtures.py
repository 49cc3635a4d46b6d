"""Pytest fixtures for scheduler tests: ``scheduler_db_url`` runs each test module on SQLite and on
PostgreSQL (a fresh schema per module; skipped where PostgreSQL is unreachable), ``scheduler_env`` gives a
migrated app + runtime + TestClient with empty tables per test.

Needs the root conftest's ``redis_url`` and ``postgres_url`` fixtures.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler.testing.factories import make_app, make_settings, reset_database


def _pg_schema_url(base: str, schema: str) -> str:
    url = sa.make_url(base)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def scheduler_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database URL for this test module: SQLite, then PostgreSQL in a schema of its own."""
    from scheduler.db import migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'twinkle.db'}"
        migrate(url)
        yield url
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = _pg_schema_url(base, schema)
    migrate(url)
    try:
        yield url
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@dataclass
class SchedulerEnv:
    app: Any
    rt: Any
    client: Any
    settings: Any
    tmp_path: Path


@pytest.fixture()
def scheduler_overrides() -> dict[str, Any]:
    """Settings overrides for ``scheduler_env``; override this fixture in a test module to change them."""
    return {}


def s3_overrides_for(request: Any) -> dict[str, Any]:
    """``scheduler_overrides`` that put storage on the test S3 server (the ``s3_bucket`` fixture) for a test whose
    name says ``s3``; none for the others."""
    if "s3" not in request.node.name:
        return {}
    s3 = request.getfixturevalue("s3_bucket")
    return dict(s3_bucket=s3["bucket"], s3_endpoint_url=s3["endpoint_url"], s3_region=s3["region"],
                s3_access_key_id="testing", s3_secret_access_key="testing")


@pytest.fixture()
def scheduler_env(
    scheduler_db_url: str, redis_url: str, tmp_path: Path, scheduler_overrides: dict[str, Any]
) -> Iterator[SchedulerEnv]:
    """The API on a clean database (tables emptied), a flushed Redis db and local storage in ``tmp_path``."""
    from fastapi.testclient import TestClient

    overrides = scheduler_overrides
    settings = make_settings(
        tmp_path, database_url=scheduler_db_url, redis_url=redis_url, run_migrations=False, **overrides
    )
    app, rt = make_app(settings)
    reset_database(rt.db)
    with TestClient(app) as client:
        yield SchedulerEnv(app, rt, client, settings, tmp_path)
    rt.close()
