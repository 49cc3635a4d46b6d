"""The contract module is the one place routes, error codes and task names are written: the API serves exactly its
routes, the web UI names the same ones, the scheduler raises only its error codes, and clients read errors one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from contract import routes
from contract.errors import (
    AuthError,
    Conflict,
    ErrorCode,
    InvalidRequest,
    NotFound,
    ServerUnavailable,
    StaleAttempt,
    error_body,
    error_from_body,
)

ROOT = Path(__file__).resolve().parents[2]


def _app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the API's routers declare, the API prefix applied as main.py does."""
    from scheduler.api import attempts, downloads, health, jobs, users, workers

    served = set()
    for module, prefix in [(m, routes.API_PREFIX) for m in (users, jobs, workers, attempts, downloads)] + [
        (health, "")
    ]:
        for route in module.router.routes:
            for method in route.methods:
                served.add((method, prefix + route.path))
    return served


def test_the_api_serves_exactly_the_routes_of_the_contract():
    served_paths = {path for _, path in _app_routes()}
    contract_paths = {routes.API_PREFIX + p for p in routes.API_ROUTES.values()} | {
        routes.HEALTHZ, routes.READYZ, routes.METRICS
    }
    assert served_paths == contract_paths


def test_the_web_ui_names_its_routes_as_the_contract_does_and_writes_no_route_by_hand():
    api_js = (ROOT / "webui/static/api.js").read_text()
    block = re.search(r"export const ROUTES = \{(.*?)\};", api_js, re.S)
    assert block, "api.js must export ROUTES"
    ui_routes = dict(re.findall(r"(\w+): '([^']+)'", block.group(1)))
    assert ui_routes, "no routes parsed from api.js"
    for name, template in ui_routes.items():
        assert routes.API_ROUTES.get(name) == template, f"api.js ROUTES.{name} = {template!r} is not the contract's"
    assert re.search(r"export const API = '([^']+)'", api_js).group(1) == routes.API_PREFIX
    # pages call the API through ROUTES only: a string that starts with an API path is a route written by hand
    segments = "|".join(re.escape(t.split("/")[1]) for t in routes.API_ROUTES.values())
    by_hand = [
        re.compile(rf"""(get|post|del|request|EventSource)\(\s*[`'"]/({segments})\b"""),
        re.compile(rf"""(\$\{{API\}}|API\s*\+\s*[`'"])/({segments})\b"""),
    ]
    for js in (ROOT / "webui/static").rglob("*.js"):
        text = js.read_text()
        assert not any(p.search(text) for p in by_hand), f"{js.relative_to(ROOT)} writes an API route by hand"


def test_path_fills_in_and_quotes_parameters_and_refuses_a_missing_one():
    assert routes.path(routes.JOB, job_id="j 1/x") == "/jobs/j%201%2Fx"
    assert routes.path(routes.ATTEMPT_ARTIFACT, job_id="j1", attempt=2, path="output/ckpt a/x.bin") == (
        "/attempts/j1/2/artifacts/output/ckpt%20a/x.bin"
    )
    with pytest.raises(KeyError, match="attempt"):
        routes.path(routes.ATTEMPT_START, job_id="j1")


def _codes_written_as_strings(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
            found.append(repr(node.value.value))
        assigns_code = isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "code" for t in node.targets
        )
        if assigns_code and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.append(repr(node.value.value))
    return found


def test_the_scheduler_raises_only_error_codes_of_the_contract():
    from scheduler import errors

    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.SchedulerError):
            assert isinstance(cls.code, ErrorCode), cls
    offenders = {}
    for py in (ROOT / "scheduler").rglob("*.py"):
        found = _codes_written_as_strings(ast.parse(py.read_text()))
        if found:
            offenders[str(py.relative_to(ROOT))] = found
    assert offenders == {}, "error codes must be ErrorCode members, not strings"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, ErrorCode.UNAUTHORIZED, AuthError),
        (403, ErrorCode.WRONG_TOKEN_KIND, AuthError),
        (403, ErrorCode.NOT_YOUR_ATTEMPT, StaleAttempt),
        (404, ErrorCode.JOB_NOT_FOUND, NotFound),
        (409, ErrorCode.STALE_ATTEMPT, StaleAttempt),
        (409, ErrorCode.JOB_ENDED, Conflict),
        (413, ErrorCode.PAYLOAD_TOO_LARGE, InvalidRequest),
        (422, ErrorCode.INVALID_REQUEST, InvalidRequest),
        (503, ErrorCode.SERVICE_UNAVAILABLE, ServerUnavailable),
    ],
)
def test_an_error_answer_becomes_the_exception_for_its_status_and_code(status, code, expected):
    exc = error_from_body(status, error_body(code, "what happened", {"name": "taken"}))
    assert type(exc) is expected
    assert (exc.status, exc.code, exc.message, exc.fields) == (status, code, "what happened", {"name": "taken"})


def test_an_answer_that_is_not_the_envelope_still_gives_a_readable_error():
    exc = error_from_body(502, "<html>Bad Gateway</html>", "Bad Gateway")
    assert isinstance(exc, ServerUnavailable)
    assert exc.code == "Bad Gateway" and "Bad Gateway" in exc.message


def test_the_contract_imports_without_fastapi_sqlalchemy_celery_or_torch():
    import subprocess
    import sys

    code = (
        "import sys, contract, contract.routes, contract.errors, contract.jobs, contract.workers,"
        " contract.attempts, contract.users\n"
        "heavy = [m for m in ('fastapi', 'sqlalchemy', 'celery', 'torch', 'starlette') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
