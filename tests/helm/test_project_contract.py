"""The chart and the Dockerfile run what the project ships: its console scripts, subcommands, settings and routes."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helm.helmchart import (
    CHART,
    GPU_POOL_VALUES,
    ROOT,
    containers,
    effective_env,
    load_values,
    pod_spec,
    process_argv,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
BIN = Path(sys.executable).parent


def _dockerfile():
    try:
        import dockerfile
    except ImportError:
        pytest.fail("the Dockerfile is read with Docker's own parser from the 'dockerfile' package: "
                    "pip install dockerfile==3.4.0")
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def final_stage(commands):
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    return commands[starts[-1]:]


def image_entrypoint() -> list[str]:
    entry = [c for c in final_stage(_dockerfile()) if c.cmd == "ENTRYPOINT"]
    assert entry and entry[-1].json, "the image needs an exec-form ENTRYPOINT"
    return list(entry[-1].value)


def twinkle_containers(rendered):
    for workload in rendered.workloads():
        for container in containers(workload):
            if container["image"].startswith(load_values(CHART / "values.yaml")["image"]["repository"]):
                yield workload, container


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_runs_a_console_script_by_default():
    stage = final_stage(_dockerfile())
    cmd = [c for c in stage if c.cmd == "CMD"][-1]
    assert cmd.json
    assert list(cmd.value) == ["twinkle-scheduler", "serve"]
    assert cmd.value[0] in SCRIPTS
    # tini is PID 1, so SIGTERM reaches the process and orphaned job processes get reaped
    assert image_entrypoint() == ["/usr/bin/tini", "--"]
    assert any("tini" in c.value[0] for c in stage if c.cmd == "RUN")
    user = [c for c in stage if c.cmd == "USER"][-1].value[0]
    assert user.split(":")[0] == "10001"  # the uid the chart's podSecurityContext runs as
    exposed = {v for c in stage if c.cmd == "EXPOSE" for v in c.value}
    assert {"8000", "8081"} <= exposed


def test_dockerfile_installs_every_package_and_valid_extras():
    commands = _dockerfile()
    copied = set()
    for command in commands:
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
            for source in command.value[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                copied.add(source)
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    # every top-level package setuptools would find, read from the tree (a pattern like twinkle* takes several)
    packages = {d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()
                and any(fnmatch.fnmatch(d.name, pattern.split(".")[0]) for pattern in patterns)}
    assert {"twinkle", "contract", "scheduler", "worker"} <= packages
    assert packages <= copied, f"packages not copied into the image: {packages - copied}"
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied

    args = {}
    for command in commands:
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            args[name] = default
    assert args["TORCH_VARIANT"] == "cpu"
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in args["EXTRAS"].split(","):
        assert extra in extras
    # the CUDA recipe in the header names extras that exist too
    header = (ROOT / "Dockerfile").read_text().split("ARG ", 1)[0]
    for recipe_extras in re.findall(r"EXTRAS=([\w,]+)", header):
        assert set(recipe_extras.split(",")) <= set(extras)
    torch_step = next(c for c in commands if c.cmd == "RUN" and "TORCH_VARIANT" in c.value[0])
    assert "cpu)" in torch_step.value[0] and "cuda)" in torch_step.value[0]


def test_torch_variant_rejects_an_unknown_build():
    """The torch step's shell fails with a message for a variant it does not know."""
    step = next(c for c in _dockerfile() if c.cmd == "RUN" and "TORCH_VARIANT" in c.value[0]).value[0]
    result = subprocess.run(["sh", "-c", step], env={"TORCH_VARIANT": "rocm", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "TORCH_VARIANT must be cpu or cuda, got 'rocm'" in result.stderr


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    def matches(pattern: str, candidate: str) -> bool:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return re.fullmatch(regex, candidate) is not None

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        if any(matches(pattern, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_sources_and_drops_local_state():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    packages = ("twinkle/", "scheduler/", "worker/", "webui/", "submit/")
    needed = [p for p in tracked if p.startswith(packages) or p in ("pyproject.toml", "README.md")]
    assert needed
    assert [p for p in needed if _dockerignore_excludes(p, patterns)] == []
    for local in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "scheduler/__pycache__/cli.cpython-311.pyc",
                  ".twinkle/twinkle.db", "helm/twinkle/values.yaml"):
        assert _dockerignore_excludes(local, patterns), local


# ---------------------------------------------------------------- the chart's processes


def test_chart_runs_the_projects_console_scripts_and_image():
    chart_meta = load_values(CHART / "Chart.yaml")
    # the image tag defaults to appVersion, so the chart and the package version move together
    assert chart_meta["appVersion"] == PYPROJECT["project"]["version"]


def _subcommand_exists(script: str, sub: str | None) -> subprocess.CompletedProcess:
    argv = [str(BIN / script)] + ([sub] if sub else []) + ["--help"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_every_container_runs_an_existing_command(render):
    rendered = render(load_values(GPU_POOL_VALUES))
    entrypoint = image_entrypoint()
    seen = set()
    for workload, container in twinkle_containers(rendered):
        argv = process_argv(container, entrypoint)
        assert argv[: len(entrypoint)] == entrypoint, "the chart must not bypass tini with `command:`"
        program, rest = argv[len(entrypoint)], argv[len(entrypoint) + 1:]
        assert program in SCRIPTS, f"{workload['metadata']['name']}: {program} is not a console script"
        seen.add((program, rest[0] if rest else None))
        tag = container["image"].rsplit(":", 1)[1]
        if program == "twinkle-worker":
            assert tag == f"{PYPROJECT['project']['version']}-cuda"
        else:
            assert tag == PYPROJECT["project"]["version"]
    assert seen == {
        ("twinkle-scheduler", "serve"), ("twinkle-scheduler", "dispatch"), ("twinkle-scheduler", "migrate"),
        ("twinkle-worker", None),
    }
    for program, sub in sorted(seen, key=str):
        result = _subcommand_exists(program, sub)
        assert result.returncode == 0, f"{program} {sub or ''} --help failed: {result.stderr[-2000:]}"
    worker_help = _subcommand_exists("twinkle-worker", None).stdout
    assert "--server" in worker_help and "--token" in worker_help


def _env_for_settings(env: dict[str, str]) -> dict[str, str]:
    """The env with credential references replaced by stand-ins of the right shape."""
    out = {}
    for key, value in env.items():
        value = re.sub(r"\{secret:[^}]+/database-url\}", "postgresql://u:p@db:5432/t", value)
        value = re.sub(r"\{secret:[^}]+/(redis-url|broker-public-url)\}", "redis://:p@redis:6379/0", value)
        value = re.sub(r"\{secret:[^}]+/worker-token\}", "twk_w_standin", value)
        value = re.sub(r"\{secret:[^}]+\}", "standin", value)
        value = re.sub(r"\{field:[^}]+\}", "node-1", value)
        out[key] = value
    return out


def test_chart_settings_are_fields_the_processes_read(render, monkeypatch):
    """pydantic-settings ignores unknown variables, so a misspelt name would silently do nothing; every
    TWINKLE_* variable the chart sets must be a field, and the whole set must load."""
    from scheduler.settings import Settings
    from worker.settings import WorkerSettings

    rendered = render(load_values(GPU_POOL_VALUES))
    checked = 0
    for workload, container in twinkle_containers(rendered):
        env = _env_for_settings(effective_env(container, rendered))
        program = container["args"][0]
        if program == "twinkle-worker":
            cls, prefix = WorkerSettings, "TWINKLE_WORKER_"
        else:
            cls, prefix = Settings, "TWINKLE_SCHEDULER_"
        fields = {name.upper() for name in cls.model_fields}
        ours = [k for k in env if k.startswith("TWINKLE_")]
        unknown = [k for k in ours if k.startswith(prefix) and k[len(prefix):] not in fields]
        assert unknown == [], f"{workload['metadata']['name']}/{container['name']}: not settings of {cls.__name__}"
        # the helper variables only feed $(VAR) expansion
        assert {k for k in ours if not k.startswith(prefix)} <= {"TWINKLE_DB_PASSWORD", "TWINKLE_REDIS_PASSWORD"}

        for key in [k for k in list(os.environ) if k.startswith("TWINKLE_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = cls()
        if cls is Settings:
            assert settings.environment == "production"
            assert settings.run_migrations is False
            assert (settings.host, settings.port) == ("0.0.0.0", 8000)
            assert settings.database_url == "postgresql://twinkle:standin@demo-twinkle-postgresql:5432/twinkle"
            assert settings.redis_url == "redis://:standin@demo-twinkle-redis:6379/0"
            assert settings.s3_bucket == "twinkle-checkpoints"
            assert settings.secret_key.get_secret_value() == "standin"
        else:
            assert settings.server_url == "http://demo-twinkle-api:8000"
            assert settings.token_value() == "twk_w_standin"
            assert settings.health_port == 8081
            assert settings.ranks in (8, 1) and settings.device_type == "cuda"
            assert settings.name == "node-1"
        checked += 1
    assert checked == 6  # api + migrate, scheduler + migrate, two worker pools


# ---------------------------------------------------------------- probes against the real servers


@pytest.mark.slow
def test_api_probes_hit_routes_the_api_serves(render, tmp_path, redis_url):
    from fastapi.testclient import TestClient

    from scheduler.main import create_app
    from scheduler.settings import Settings

    rendered = render()
    api = pod_spec(rendered.get("Deployment", "demo-twinkle-api"))["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    probe_paths = {api["livenessProbe"]["httpGet"]["path"], api["readinessProbe"]["httpGet"]["path"]}
    assert probe_paths == {"/healthz", "/readyz"}
    assert ports[api["livenessProbe"]["httpGet"]["port"]] == int(effective_env(api, rendered)["TWINKLE_SCHEDULER_PORT"])

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'twinkle.db'}", redis_url=redis_url, storage_dir=tmp_path / "storage",
    )
    app = create_app(settings)
    routes = set(app.openapi()["paths"])  # the public list; app.routes may hold lazily included routers
    monitor_path = "/metrics"  # the ServiceMonitor's path
    assert probe_paths | {monitor_path} <= routes
    with TestClient(app) as client:
        for path in sorted(probe_paths | {monitor_path}):
            assert client.get(path).status_code == 200, path


def test_worker_probe_hits_the_workers_health_endpoint(render, tmp_path):
    """The DaemonSet probes the port and path the worker's own health server answers on."""
    from worker.daemon import WorkerDaemon
    from worker.settings import WorkerSettings

    rendered = render(load_values(GPU_POOL_VALUES))
    worker = pod_spec(rendered.get("DaemonSet", "demo-twinkle-worker-a100"))["containers"][0]
    env = effective_env(worker, rendered)
    probe = worker["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports[probe["port"]] == int(env["TWINKLE_WORKER_HEALTH_PORT"])

    # same path, served by the real daemon's health server (on a free port here; nothing registers)
    settings = WorkerSettings(token="twk_w_standin", health_port=free_port(), health_host="127.0.0.1",
                              device_type="cpu", ranks=1, work_dir=tmp_path)
    daemon = WorkerDaemon(settings)
    port = daemon.start_health_server()
    try:
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['path']}", timeout=10)
        # 503 before the first heartbeat: the path exists and reports, it is not a 404
        assert unhealthy.value.code == 503
        assert json.loads(unhealthy.value.read())["status"] == "unhealthy"
        daemon.last_heartbeat = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['path']}", timeout=10) as ok:
            assert ok.status == 200
    finally:
        daemon.stop()
