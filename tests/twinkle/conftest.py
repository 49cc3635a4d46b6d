"""Fixtures for the twinkle data-pipeline and infra tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_twinkle_state(monkeypatch):
    """Each test starts with no mode, mesh or groups set, and no launcher environment leaking in."""
    from twinkle.infra import _state

    for var in ("TWINKLE_MODE", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    _state.reset()
    yield
    _state.reset()
