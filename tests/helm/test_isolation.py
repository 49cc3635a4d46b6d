"""The chart's workers get the sandbox guarantees: how jobs are isolated (bwrap in the pod, a sandboxing
RuntimeClass, or an explicit trusted pool) and a NetworkPolicy that lets worker pods reach only what they must."""

from __future__ import annotations

import pytest

from tests.helm.helmchart import GPU_POOL_VALUES, RELEASE, containers, deep_merge, effective_env, load_values, pod_spec
from tests.helm.test_render import validate_manifests

WORKER = {"worker": {"enabled": True, "token": "twk_w_x"}}


def _worker(rendered, name: str = f"{RELEASE}-twinkle-worker"):
    return rendered.get("DaemonSet", name)


def test_default_isolation_is_bwrap_with_what_it_needs_from_the_pod(render):
    rendered = render(WORKER)
    ds = _worker(rendered)
    spec, container = pod_spec(ds), containers(ds)[0]
    env = effective_env(container, rendered)
    assert env["TWINKLE_WORKER_ISOLATION"] == "bwrap" and "TWINKLE_WORKER_TRUSTED_POOL" not in env
    # what bwrap needs: its syscalls, a fresh /proc, a user namespace for the pod; nothing more
    assert spec["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert spec["hostUsers"] is False
    assert container["securityContext"]["procMount"] == "Unmasked"
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/worker"] == "unconfined"
    # and the container stays locked down otherwise: bwrap needs no privilege, no capability, no root
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in container["securityContext"]


def test_the_bwrap_relaxations_can_be_narrowed(render):
    rendered = render(deep_merge(WORKER, {"worker": {"bwrap": {
        "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/twinkle-bwrap.json"},
        "appArmorProfile": "localhost/twinkle-bwrap", "procMount": "", "hostUsers": None,
    }}}))
    ds = _worker(rendered)
    spec = pod_spec(ds)
    assert spec["securityContext"]["seccompProfile"]["localhostProfile"] == "profiles/twinkle-bwrap.json"
    assert "hostUsers" not in spec and "procMount" not in containers(ds)[0]["securityContext"]
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/worker"] == "localhost/twinkle-bwrap"


def test_container_isolation_runs_under_a_sandboxing_runtime_class_without_relaxations(render):
    rendered = render(deep_merge(WORKER, {"worker": {"isolation": "container", "runtimeClassName": "gvisor"}}))
    ds = _worker(rendered)
    spec, container = pod_spec(ds), containers(ds)[0]
    assert spec["runtimeClassName"] == "gvisor"
    assert effective_env(container, rendered)["TWINKLE_WORKER_ISOLATION"] == "container"
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostUsers" not in spec and "procMount" not in container["securityContext"]
    assert not any("apparmor" in k for k in ds["spec"]["template"]["metadata"].get("annotations", {}))


def test_a_trusted_pool_says_so(render):
    rendered = render(deep_merge(WORKER, {"worker": {"isolation": "none", "trustedPool": True}}))
    env = effective_env(containers(_worker(rendered))[0], rendered)
    assert env["TWINKLE_WORKER_ISOLATION"] == "none" and env["TWINKLE_WORKER_TRUSTED_POOL"] == "true"


@pytest.mark.parametrize("values,expected", [
    ({"worker": {"isolation": "container"}}, ["worker.isolation=container", "needs worker.runtimeClassName", "gVisor"]),
    ({"worker": {"isolation": "none"}}, ["worker.isolation=none", "worker.trustedPool=true"]),
    ({"api": {"enabled": False}, "scheduler": {"enabled": False}, "worker": {"serverUrl": "https://t.example.org"}},
     ["networkPolicy.worker.extraEgress", "networkPolicy.enabled=false"]),
])
def test_unsafe_or_unreachable_worker_settings_fail_with_the_fix(chart, helm, values, expected):
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(deep_merge(WORKER, values), name="demo", namespace="lab")
    for fragment in expected:
        assert fragment in str(caught.value)


@pytest.mark.parametrize("values,path", [
    ({"worker": {"isolation": "gvisor"}}, "/worker/isolation"),
    ({"worker": {"bwrap": {"procMount": "unmasked"}}}, "/worker/bwrap/procMount"),
    ({"worker": {"bwrap": {"seccompProfile": {"type": "Unconfined", "profile": "x"}}}}, "/worker/bwrap/seccompProfile"),
    ({"networkPolicy": {"worker": {"extraEgress": [{"too": []}]}}}, "/networkPolicy/worker/extraEgress/0"),
    ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
])
def test_schema_rejects_bad_isolation_values(chart, helm, values, path):
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values, name="demo", namespace="lab")
    assert path in str(caught.value)


def _policy(rendered):
    return rendered.get("NetworkPolicy", f"{RELEASE}-twinkle-worker")


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_worker_pods_reach_only_dns_and_the_api(render):
    rendered = render(WORKER)
    policy = _policy(rendered)["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == []  # nothing may connect to a worker pod
    labels = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
              for d in rendered.workloads()}
    targets = []
    for rule in policy["egress"]:
        ports = sorted((p["port"], p["protocol"]) for p in rule["ports"])
        for peer in rule["to"]:
            if "namespaceSelector" in peer:
                targets.append(("dns", ports))
                continue
            hits = [c for c, w in labels.items()
                    if _selects(peer["podSelector"], w["spec"]["template"]["metadata"]["labels"])]
            targets.append((hits, ports))
    assert targets == [("dns", [(53, "TCP"), (53, "UDP")]), (["api"], [(8000, "TCP")])]
    # not Redis, not the database, not the scheduler: a job that escaped into the pod's network cannot reach them


def test_the_policy_covers_every_pool_and_nothing_else(render):
    rendered = render(load_values(GPU_POOL_VALUES))
    selector = _policy(rendered)["spec"]["podSelector"]
    selected = {w["metadata"]["name"] for w in rendered.workloads()
                if _selects(selector, w["spec"]["template"]["metadata"]["labels"])}
    assert selected == {f"{RELEASE}-twinkle-worker-a100", f"{RELEASE}-twinkle-worker-l4"}
    extra = _policy(rendered)["spec"]["egress"][-1]
    assert extra["ports"] == [{"port": 9000, "protocol": "TCP"}]  # the S3 endpoint, from networkPolicy.worker.extraEgress


def test_network_policy_can_be_turned_off_and_health_opened(render):
    assert not render(deep_merge(WORKER, {"networkPolicy": {"enabled": False}})).of_kind("NetworkPolicy")
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    policy = _policy(render(deep_merge(WORKER, {"networkPolicy": {"worker": {"healthFrom": peers}}})))["spec"]
    assert policy["ingress"] == [{"from": peers, "ports": [{"port": 8081, "protocol": "TCP"}]}]


@pytest.mark.slow  # kubernetes-validate loads large schema files: seconds per manifest
@pytest.mark.parametrize("values", [
    WORKER,
    deep_merge(WORKER, {"worker": {"isolation": "container", "runtimeClassName": "kata"}}),
    deep_merge(WORKER, {"worker": {"isolation": "none", "trustedPool": True},
                        "networkPolicy": {"worker": {"healthFrom": [{"podSelector": {}}]}}}),
], ids=["bwrap", "container", "none"])
def test_worker_manifests_are_valid_kubernetes(render, values):
    rendered = render(values)
    docs = [d for d in rendered.docs if d["kind"] in ("DaemonSet", "NetworkPolicy")]
    assert len(docs) == 2
    assert validate_manifests(docs) == []
