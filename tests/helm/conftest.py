"""Fixtures for the chart tests; the helpers live in ``tests/helm/helmchart.py``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helm.helmchart import CHART, INSTALL_HINT, Rendered, render_chart


def _helm():
    try:
        import helm_python
    except ImportError:  # a clear failure per test rather than a collection error that stops every suite
        pytest.fail(f"the helm tests render with Helm's engine from helm-python-sdk; install it: {INSTALL_HINT}")
    return helm_python


@pytest.fixture(scope="session")
def helm():
    return _helm()


@pytest.fixture(scope="session")
def chart(helm):
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    """``render(values)`` -> Rendered; values are merged over the chart defaults by Helm itself."""

    cache: dict[str, Rendered] = {}

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        # the same values render the same manifests; tests only read them (copy before changing one)
        key = json.dumps(values, sort_keys=True)
        if key not in cache:
            cache[key] = render_chart(chart, values)
        return cache[key]

    return _render
