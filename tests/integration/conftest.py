"""The whole platform as real processes (``scheduler.testing.Stack``): the API, the dispatcher and
``twinkle-worker`` daemons, real Redis, moto_server as S3, SQLite or PostgreSQL. Short heartbeat, lease and
start-deadline settings keep failure tests quick.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.testing.stack import BIN, Stack, base_env, running_stack

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["BIN", "ROOT", "Stack", "run_submit", "running_stack"]


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path) -> Iterator[str]:
    """SQLite by default; tests that also run on PostgreSQL parametrize this fixture indirectly."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'twinkle.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa

    name = f"twinkle_e2e_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - no CREATE DATABASE right: nothing to test against
        admin.dispose()
        pytest.skip(f"cannot create a PostgreSQL database for the e2e test: {exc.__class__.__name__}")
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def stack(tmp_path, database_url, redis_url, s3_bucket) -> Iterator[Stack]:
    """API + dispatcher on a fresh database, Redis db and bucket; workers are started by the test."""
    with running_stack(tmp_path, redis_url=redis_url, database_url=database_url, s3=s3_bucket) as s:
        yield s


def run_submit(stack: Stack, args: list[str], token: str | None, timeout: float = 120, **env_extra) -> subprocess.CompletedProcess:
    """Run the real ``twinkle-submit`` console script."""
    env = base_env()
    env["TWINKLE_API_URL"] = stack.url
    env["XDG_CONFIG_HOME"] = str(stack.home / "no-config")
    env["COLUMNS"] = "200"
    if token:
        env["TWINKLE_TOKEN"] = token
    env.update(env_extra)
    return subprocess.run(
        [str(BIN / "twinkle-submit"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=stack.home
    )
