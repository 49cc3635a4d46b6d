"""The test harness (``scheduler.testing``) stays out of production: no shipped module imports it, and the
``Stack`` that tests and benchmarks share keeps the test process's own settings out of its children."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scheduler.testing.stack import Service, Stack, base_env

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("scheduler", "worker", "submit", "contract", "webui", "twinkle", "twinkle_client", "twinkle_agentic")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_shipped_module_imports_the_test_harness():
    offenders = []
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(ROOT / "scheduler" / "testing"):
                continue
            if any(m == "scheduler.testing" or m.startswith("scheduler.testing.") for m in imported_modules(path)):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_stacks_children_get_none_of_the_test_processes_twinkle_aws_or_redis_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("TWINKLE_SCHEDULER_DATABASE_URL", "sqlite:////the/test/process/own.db")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-test-process-own")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/0")
    env = base_env()
    assert not any(k.startswith(("TWINKLE_", "AWS_")) or k == "REDIS_URL" for k in env)
    stack = Stack(tmp_path, redis_url="redis://127.0.0.1:1/3", settings={"lease_s": 9, "max_bundle_mb": None})
    env = stack.scheduler_env(api_workers=2)
    assert env["TWINKLE_SCHEDULER_DATABASE_URL"] == f"sqlite:///{tmp_path / 'twinkle.db'}"
    assert env["TWINKLE_SCHEDULER_LEASE_S"] == "9" and env["TWINKLE_SCHEDULER_API_WORKERS"] == "2"
    assert "TWINKLE_SCHEDULER_MAX_BUNDLE_MB" not in env  # None: the scheduler's own default
    assert "AWS_SECRET_ACCESS_KEY" not in env and "REDIS_URL" not in env


def test_a_service_restarts_with_the_same_command_and_its_run_log_starts_afresh(tmp_path):
    import sys

    svc = Service("echo", [sys.executable, "-c", "print('hello')"], base_env(), tmp_path, tmp_path / "echo.log")
    svc.start()
    svc.popen.wait(30)
    assert svc.run_log() == "hello\n"
    svc.restart()
    svc.popen.wait(30)
    assert svc.run_log() == "hello\n" and svc.log() == "hello\nhello\n"


def test_a_service_that_exits_while_starting_says_so_with_its_log(tmp_path):
    import sys

    svc = Service("broken", [sys.executable, "-c", "raise SystemExit('no database')"], base_env(), tmp_path,
                  tmp_path / "broken.log", health_url="http://127.0.0.1:9/healthz")
    with pytest.raises(RuntimeError, match="no database"):
        svc.start(timeout=30)
