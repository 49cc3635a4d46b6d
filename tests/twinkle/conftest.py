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


@pytest.fixture(scope="session", autouse=True)
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir) -> str:
    return str(tiny_model_dir)


@pytest.fixture(scope="session")
def template(model_dir):
    from twinkle.template import Template

    return Template(model_dir, max_length=256)


def make_chat(*turns: str, system: str | None = None) -> dict:
    """A trajectory from alternating user/assistant texts."""
    messages = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"messages": messages}


@pytest.fixture(scope="session")
def chat():
    return make_chat
