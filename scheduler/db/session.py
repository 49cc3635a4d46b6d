"""Engine and session setup (SQLite with WAL and foreign keys; PostgreSQL in production) and migrations."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

HERE = Path(__file__).resolve().parent


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    """A 16-hex-char random id: short enough to type, wide enough never to collide in practice."""
    return secrets.token_hex(8)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the API read while the dispatcher writes; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if u.get_driver_name() == "psycopg2":
        # The dispatcher updates thousands of rows per round with executemany; batch them into few round trips.
        kwargs.setdefault("executemany_mode", "values_plus_batch")
        kwargs.setdefault("executemany_batch_page_size", 500)
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


class Database:
    """An engine and its session factory; one per process (or per test)."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit: tuple[sa.Engine, sa.Engine] | None = None

    def _autocommit_engine(self) -> sa.Engine:
        # The same pool in autocommit mode, for requests that only read: psycopg2 sends BEGIN as a round trip of
        # its own and the session's end a ROLLBACK, two of the five or so round trips a listing costs. Made for
        # the engine of the moment (tests swap it to simulate an outage).
        if self._autocommit is None or self._autocommit[0] is not self.engine:
            self._autocommit = (self.engine, self.engine.execution_options(isolation_level="AUTOCOMMIT"))
        return self._autocommit[1]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """A session, closed on the way out. ``readonly``: each statement commits on its own (no transaction, so
        no snapshot across statements); only for work that never writes."""
        with (self.sessionmaker(bind=self._autocommit_engine()) if readonly else self.sessionmaker()) as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("select 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (``alembic upgrade head``)."""
    from alembic import command

    make_engine(url).dispose()  # creates the SQLite folder if needed
    command.upgrade(alembic_config(url), revision)
