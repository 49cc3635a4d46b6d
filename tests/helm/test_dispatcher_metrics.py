"""The dispatcher's metrics reach Prometheus: the chart passes ``--metrics-port``, exposes that port on the pod,
a Service and a ServiceMonitor, all with one number; and the real ``twinkle-scheduler dispatch`` serves the
dispatch latency histogram there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import free_port
from tests.helm.helmchart import NAMESPACE, Rendered, pod_spec

BIN = os.path.dirname(sys.executable)
SCHEDULER = "demo-twinkle-scheduler"
HISTOGRAM = "twinkle_dispatch_latency_seconds"


def dispatcher(rendered: Rendered) -> tuple[dict, dict]:
    """(the dispatcher Deployment, its dispatch container)."""
    deployment = rendered.get("Deployment", SCHEDULER)
    (container,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == "scheduler"]
    return deployment, container


def metrics_port_flag(argv: list[str]) -> int | None:
    if "--metrics-port" not in argv:
        return None
    return int(argv[argv.index("--metrics-port") + 1])


@pytest.mark.parametrize(
    "values, port",
    [
        ({"serviceMonitor": {"enabled": True}}, 9100),  # follows the ServiceMonitor switch, default port
        ({"serviceMonitor": {"enabled": True}, "scheduler": {"metrics": {"enabled": True, "port": 9311}}}, 9311),
    ],
    ids=["with-service-monitor", "explicit-port"],
)
def test_one_port_from_the_command_to_the_service_monitor(render, values, port):
    rendered = render(values)
    deployment, container = dispatcher(rendered)
    assert container["args"][:2] == ["twinkle-scheduler", "dispatch"]
    assert metrics_port_flag(container["args"]) == port

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": port}

    service = rendered.get("Service", SCHEDULER)
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "metrics" and service_port["port"] == port
    target = service_port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) == port
    # the Service selects the dispatcher's pods and nothing else (the API's pods serve their own /metrics)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    api_pods = rendered.get("Deployment", "demo-twinkle-api")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= api_pods.items()

    monitor = rendered.get("ServiceMonitor", SCHEDULER)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"
    # the API's monitor is still there, unchanged
    assert rendered.get("ServiceMonitor", "demo-twinkle-api")["spec"]["endpoints"][0]["port"] == "http"


def test_metrics_without_a_service_monitor(render):
    """Metrics on for a plain Prometheus scrape config: flag, pod port and Service, but no ServiceMonitor."""
    rendered = render({"scheduler": {"metrics": {"enabled": True}}})
    _, container = dispatcher(rendered)
    assert metrics_port_flag(container["args"]) == 9100
    assert rendered.get("Service", SCHEDULER)["spec"]["ports"][0]["port"] == 9100
    assert rendered.of_kind("ServiceMonitor") == []


@pytest.mark.parametrize(
    "values",
    [None, {"serviceMonitor": {"enabled": True}, "scheduler": {"metrics": {"enabled": False}}}],
    ids=["defaults", "service-monitor-but-metrics-off"],
)
def test_off_when_metrics_are_off(render, values):
    rendered = render(values)
    _, container = dispatcher(rendered)
    assert container["args"] == ["twinkle-scheduler", "dispatch"]
    assert "ports" not in container
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered.docs}
    assert ("Service", SCHEDULER) not in names and ("ServiceMonitor", SCHEDULER) not in names


def test_nothing_for_a_pool_without_the_dispatcher(render):
    values = {"scheduler": {"enabled": False, "metrics": {"enabled": True}}}
    names = {(d["kind"], d["metadata"]["name"]) for d in render(values).docs}
    assert not {n for n in names if n[1] == SCHEDULER}


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.slow  # starts the dispatcher process (a few seconds of imports)
def test_the_charts_dispatch_command_serves_the_histogram(render, tmp_path, redis_url):
    """Run the rendered dispatcher command (on a free port) against a database holding one queued job and a
    live worker that fits: its first round dispatches the job, and ``/metrics`` on the chart's port shows the
    latency histogram with that one observation."""
    import sqlalchemy as sa
    from fastapi.testclient import TestClient

    from scheduler.db import JobModel
    from scheduler.testing import (
        InProcessWorker,
        create_user,
        create_worker_token,
        make_app,
        make_settings,
        submit_script,
    )
    from scheduler.testing.factories import cpu_group

    port = free_port()
    _, container = dispatcher(render({"serviceMonitor": {"enabled": True}, "scheduler": {"metrics": {"port": port}}}))
    argv = container["args"]
    assert metrics_port_flag(argv) == port == container["ports"][0]["containerPort"]

    settings = make_settings(tmp_path, redis_url=redis_url, lease_s=300.0)
    app, rt = make_app(settings)
    with TestClient(app) as c:
        token = create_user(c, "alice")
        InProcessWorker(c, create_worker_token(c), "cpu-box", [cpu_group()]).register()
        job = submit_script(c, token, "print('hello')\n").json()
    rt.close()
    assert job["state"] == "queued", job

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINKLE_", "AWS_"))}
    env.update(
        TWINKLE_SCHEDULER_DATABASE_URL=settings.database_url,
        TWINKLE_SCHEDULER_REDIS_URL=redis_url,
        TWINKLE_SCHEDULER_STORAGE_DIR=str(tmp_path / "storage"),
        TWINKLE_SCHEDULER_SECRET_KEY="test-secret-key",
        TWINKLE_SCHEDULER_DISPATCH_INTERVAL_S="0.2",
    )
    log_path = tmp_path / "dispatch.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([os.path.join(BIN, argv[0]), *argv[1:]], env=env, stdout=log, stderr=log)
    text, count = "", None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = _scrape(f"http://127.0.0.1:{port}/metrics")
                count = _sample(text, f"{HISTOGRAM}_count")
                if count:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(15)
    where = f"the dispatcher's log:\n{log_path.read_text()[-3000:]}"
    assert f"# TYPE {HISTOGRAM} histogram" in text, where
    assert count == 1.0, f"{HISTOGRAM}_count is {count}; {where}"
    assert _sample(text, f'{HISTOGRAM}_bucket{{le="+Inf"}}') == 1.0
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            state = conn.execute(sa.select(JobModel.state).where(JobModel.id == job["id"])).scalar_one()
    finally:
        engine.dispose()
    assert state == "assigned", where
