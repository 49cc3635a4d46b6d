"""Bad values fail at render time, before anything reaches a cluster, and the error names the value to fix."""

from __future__ import annotations

import pytest

from tests.helm.helmchart import GPU_POOL_VALUES, deep_merge, load_values

# values.schema.json: wrong types, missing required values, unknown keys, out-of-range values
SCHEMA_CASES = {
    "wrong type": ({"api": {"replicaCount": "two"}}, ["/api/replicaCount", "want integer"]),
    "missing required (null deletes a key)": ({"image": {"repository": None}}, ["/image", "repository"]),
    "empty required string": ({"image": {"repository": ""}}, ["/image/repository", "minLength"]),
    "misspelt top-level key": ({"postgressql": {"enabled": False}}, ["postgressql", "not allowed"]),
    "misspelt nested key": ({"worker": {"gpuPerNode": 4}}, ["/worker", "gpuPerNode"]),
    "unknown enum value": ({"s3": {"addressingStyle": "sideways"}}, ["/s3/addressingStyle", "path"]),
    "unquoted node label": (
        {"worker": {"nodeSelector": {"nvidia.com/gpu.present": True}}},
        ["/worker/nodeSelector", "want string"],
    ),
    "admin token pasted as worker token": (
        {"worker": {"enabled": True, "token": "hunter2"}},
        ["/worker/token", "twk_w_"],
    ),
    "pool without a name": (
        {"worker": {"enabled": True, "token": "twk_w_x", "pools": [{"gpusPerNode": 2}]}},
        ["/worker/pools/0", "name"],
    ),
    "zero GPUs": ({"worker": {"gpusPerNode": 0}}, ["/worker/gpusPerNode", "minimum"]),
    "service type typo": ({"api": {"service": {"type": "Loadbalancer"}}}, ["/api/service/type", "LoadBalancer"]),
    "redis password that breaks the URL": (
        {"redis": {"auth": {"password": "p@ss/word"}}},
        ["/redis/auth/password", "does not match"],
    ),
    "bucket with a URL": ({"s3": {"bucket": "s3://twinkle"}}, ["/s3/bucket"]),
    "dispatcher metrics port out of range": (
        {"scheduler": {"metrics": {"port": 70000}}},
        ["/scheduler/metrics/port", "maximum"],
    ),
    "dispatcher metrics switch as a word": (
        {"scheduler": {"metrics": {"enabled": "yes"}}},
        ["/scheduler/metrics/enabled", "want null or boolean"],
    ),
}

# cross-field rules (templates/_helpers.tpl "twinkle.validate"): the message says what to set
TEMPLATE_CASES = {
    "external database without a URL": (
        {"postgresql": {"enabled": False}},
        ["postgresql.enabled=false needs externalDatabase.url", "externalDatabase.existingSecret"],
    ),
    "external Redis without a URL": (
        {"redis": {"enabled": False}},
        ["redis.enabled=false needs externalRedis.url", "externalRedis.existingSecret"],
    ),
    "workers without a token": (
        {"worker": {"enabled": True}},
        ["worker.enabled=true needs worker.token", "POST /api/v1/worker-tokens", "worker.existingSecret"],
    ),
    "workers-only install without a server": (
        {"api": {"enabled": False}, "worker": {"enabled": True, "token": "twk_w_x"}},
        ["needs worker.serverUrl"],
    ),
    "several API pods on local storage": (
        {"api": {"replicaCount": 3}},
        ["api.replicaCount=3 needs s3.bucket", "api.replicaCount=1"],
    ),
    "half an S3 key pair": (
        {"s3": {"bucket": "twinkle", "accessKeyId": "AKIA..."}},
        ["s3.accessKeyId and s3.secretAccessKey go together"],
    ),
    "lease shorter than a heartbeat": (
        {"config": {"leaseS": 5}},
        ["config.leaseS (5) must exceed config.heartbeatIntervalS (10)"],
    ),
    "ingress without the API": (
        {"api": {"enabled": False}, "scheduler": {"enabled": False}, "ingress": {"enabled": True}},
        ["ingress.enabled=true", "api.enabled=true"],
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_schema_rejects(chart, helm, case):
    values, expected = SCHEMA_CASES[case]
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values, name="demo", namespace="lab")
    message = str(caught.value)
    assert "schema" in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("case", sorted(TEMPLATE_CASES))
def test_template_checks_reject(chart, helm, case):
    values, expected = TEMPLATE_CASES[case]
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values, name="demo", namespace="lab")
    message = str(caught.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_the_same_values_pass_once_fixed(chart):
    """Each rule above rejects only the bad value: the fixed neighbour of a few cases renders."""
    fixed = [
        {"postgresql": {"enabled": False}, "externalDatabase": {"url": "postgresql://u:p@db:5432/t"}},
        {"redis": {"enabled": False}, "externalRedis": {"existingSecret": "my-redis"}},
        {"api": {"replicaCount": 3}, "s3": {"bucket": "twinkle"}},
        {"worker": {"enabled": True, "token": "twk_w_x"}},
        {"worker": {"enabled": True, "token": "twk_w_x", "pools": [{"name": "h100", "gpusPerNode": 8}]}},
        deep_merge(load_values(GPU_POOL_VALUES), {"s3": {"accessKeyId": "", "secretAccessKey": ""}}),
    ]
    for values in fixed:
        assert chart.render(values, name="demo", namespace="lab")
