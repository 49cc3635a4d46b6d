"""A short chaos run in CI (``bench/chaos.py`` runs the long one): 10 jobs of 3 users over 2 workers while a
worker, the dispatcher, the API and Redis are each kill -9ed once at random moments and restarted.

Every job must end succeeded with one succeeded attempt, none may run to completion twice, and each
succeeded job's last log and checkpoint must be complete."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_short_chaos_run_keeps_every_invariant(tmp_path):
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    chaos = importlib.import_module("chaos")
    report = chaos.run_chaos(tmp_path, jobs=10, users=3, workers=2, rounds=1, seed=14, timeout_s=300)
    print(report.summary())
    assert report.problems == [], report.summary() + "\n" + "\n".join(
        f"===== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(tmp_path.glob("*.log"))
    )
    assert report.states == {"succeeded": 10}
    assert set(report.kills) >= {"api", "dispatcher", "redis"} and any(k.startswith("w") for k in report.kills)
