"""A bounded run of ``bench/api_load.py`` in CI: the real API process under 150 concurrent clients submitting
and listing. Before issue 14 such a burst made the API answer 500 (``QueuePool limit reached`` while
authenticating) and stall heartbeats; now: no 5xx, no time-out, every accepted job stored exactly once, and
no heartbeat slower than the slack a lease has."""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    # a plain import from bench/ on sys.path: the client processes (spawned) import it again by name
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module("api_load")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'twinkle.db'}"
        return
    import sqlalchemy as sa

    base = request.getfixturevalue("postgres_url")
    name = f"twinkle_load_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.slow
def test_150_concurrent_clients_no_server_error_exactly_once_heartbeats_on_time(tmp_path, db_url, redis_url):
    bench = load_bench()
    server = bench.start_api(tmp_path, db_url, redis_url)
    try:
        tokens = bench.make_users(server, 10)
        worker = bench.make_worker(server)
        phase = bench.run_phase(server, tokens, worker, clients=150, rounds=1, procs=2, timeout=120, tag="ci")
        print(phase.summary())
        assert phase.server_errors == 0 and phase.timeouts == 0, phase.summary()
        assert len(phase.accepted) == 150, phase.summary()
        assert bench.check_exactly_once(db_url, phase, "ci") == []
        assert phase.probe_failures == 0 and phase.beats
        assert max(phase.beats) < bench.LEASE_S - bench.HEARTBEAT_INTERVAL_S, phase.summary()
    finally:
        server.close()
    assert "Traceback" not in server.service("api").log()


@pytest.mark.slow
def test_the_raw_load_client_sees_what_httpx_sees(tmp_path, redis_url):
    """``--client raw`` (the cheap load generator): every submission accepted and stored once, its statuses the
    server's own (a wrong token is 401 through it too)."""
    bench = load_bench()
    db_url = f"sqlite:///{tmp_path / 'twinkle.db'}"
    server = bench.start_api(tmp_path, db_url, redis_url)
    try:
        tokens = bench.make_users(server, 3)
        worker = bench.make_worker(server)
        phase = bench.run_phase(server, tokens, worker, clients=40, rounds=2, procs=1, timeout=60, tag="raw",
                                client="raw")
        assert phase.server_errors == 0 and phase.timeouts == 0, phase.summary()
        assert len(phase.accepted) == 80 and len(phase.of("list")) == 80, phase.summary()
        assert {s.status for s in phase.of("list")} == {200}
        assert bench.check_exactly_once(db_url, phase, "raw") == []
        refused = bench.run_phase(server, ["not-a-token"], worker, clients=2, rounds=1, procs=1, timeout=60,
                                  tag="bad", client="raw")
        assert {s.status for s in refused.samples} == {401}, refused.summary()
    finally:
        server.close()
