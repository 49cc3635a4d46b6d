"""schemathesis against the API's own OpenAPI: a bounded number of generated requests per route, on the real app
(SQLite, Redis, local storage), with a real user token or worker token as the route needs; no answer may be a
server error. Bad input is a 4xx naming the rule, whatever it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from scheduler.testing import InProcessWorker, create_user, create_worker_token, submit_script
from scheduler.testing.factories import ADMIN_TOKEN, CPU_JOB, cpu_group, make_app, make_settings

pytestmark = [pytest.mark.slow]

EXAMPLES_PER_ROUTE = 12


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory, redis_server_url: str):
    import redis
    from fastapi.testclient import TestClient

    from scheduler.db import migrate
    from scheduler.services import dispatch

    tmp: Path = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'twinkle.db'}"
    migrate(url)
    redis_url = redis_server_url.rstrip("/") + "/11"
    redis.Redis.from_url(redis_url).flushdb()
    app, rt = make_app(make_settings(tmp, database_url=url, redis_url=redis_url, run_migrations=False,
                                     claim_wait_s=0.5))
    with TestClient(app) as c:
        user = create_user(c, "fuzzer")
        worker = InProcessWorker(c, create_worker_token(c), "fuzz-box", [cpu_group()])
        worker.register()
        submit_script(c, user, CPU_JOB)  # a real job and attempt, so some generated ids can hit something
        dispatch.dispatch_round(rt.db, rt.redis)
        yield app, {"user": user, "worker": worker.token, "admin": ADMIN_TOKEN}
    rt.close()


def token_for(path: str, tokens: dict[str, str]) -> str:
    if path.startswith(("/api/v1/workers/", "/api/v1/attempts/")) and not path.endswith(("/approve", "/revoke")):
        return tokens["worker"]
    if path in ("/api/v1/users", "/api/v1/worker-tokens") or path.endswith("/approve"):
        return tokens["admin"]
    return tokens["user"]


def test_no_route_answers_a_server_error(fuzz_env):
    """Every operation of the OpenAPI, EXAMPLES_PER_ROUTE generated requests each (derandomized: the same
    examples every run); every server error is collected and reported with a curl line to reproduce it."""
    from hypothesis import given

    app, tokens = fuzz_env
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    errors: list[str] = []
    statuses: dict[int, int] = {}

    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token_for(case.path, tokens)}"}
            response = case.call(timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                errors.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}\n"
                    f"  reproduce: {case.as_curl_command()}"
                )

        run()
    print(f"{len(operations)} operations, {sum(statuses.values())} requests, statuses {sorted(statuses.items())}")
    assert sum(statuses.values()) >= 3 * len(operations)  # it really sent requests
    assert not errors, f"{len(errors)} server error(s):\n" + "\n".join(errors[:20])
