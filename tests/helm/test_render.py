"""The chart renders with Helm's engine and every manifest is valid Kubernetes (strict: unknown fields fail)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from tests.helm.helmchart import (
    CHART,
    GPU_POOL_VALUES,
    JOIN_POOL_VALUES,
    NAMESPACE,
    RELEASE,
    containers,
    load_values,
    pod_spec,
)

# the oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

# custom resources: kubernetes-validate ships only the built-in schemas, so these get a structural check
CUSTOM_KINDS = {"ServiceMonitor"}

VALUE_SETS = {
    "defaults": None,
    "gpu-pool": GPU_POOL_VALUES,
    "join-pool": JOIN_POOL_VALUES,
}


def _values(name):
    path = VALUE_SETS[name]
    return None if path is None else load_values(path)


def validate_manifests(docs) -> list[str]:
    problems = []
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                problems.append(f"{doc['kind']}/{doc['metadata']['name']} @ {version}: {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(exc.message)
    return problems


def test_validator_rejects_a_bad_manifest(render):
    """The check below can fail: a wrong type and, in strict mode, an unknown field are reported."""
    deployment = render().get("Deployment", f"{RELEASE}-twinkle-api")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    assert any("replicas" in p for p in validate_manifests([wrong_type]))
    typo = copy.deepcopy(deployment)
    pod_spec(typo)["containers"][0]["livenesProbe"] = {}
    assert any("livenesProbe" in p for p in validate_manifests([typo]))
    assert validate_manifests([deployment]) == []


@pytest.mark.slow  # kubernetes-validate loads large schema files per manifest: seconds per value set
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_renders_valid_kubernetes(render, value_set):
    rendered = render(_values(value_set))
    assert rendered.docs, "nothing rendered"
    assert validate_manifests(rendered.docs) == []
    for doc in rendered.docs:
        assert doc["metadata"]["name"].startswith(f"{RELEASE}-twinkle"), doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_defaults_render_the_platform(render):
    rendered = render()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered.docs}
    for expected in [
        ("Deployment", "demo-twinkle-api"),
        ("Service", "demo-twinkle-api"),
        ("Deployment", "demo-twinkle-scheduler"),
        ("StatefulSet", "demo-twinkle-redis"),
        ("Service", "demo-twinkle-redis"),
        ("StatefulSet", "demo-twinkle-postgresql"),
        ("Service", "demo-twinkle-postgresql"),
        ("Secret", "demo-twinkle"),
        ("ConfigMap", "demo-twinkle-config"),
        ("PersistentVolumeClaim", "demo-twinkle-storage"),
    ]:
        assert expected in kinds
    # workers need a token the admin creates after install, so the defaults have none
    assert rendered.of_kind("DaemonSet") == []
    assert rendered.of_kind("Ingress") == []
    assert rendered.of_kind("ServiceMonitor") == []


def test_services_select_their_pods(render):
    rendered = render(_values("gpu-pool"))
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in rendered.workloads()}
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        matched = [name for name, labels in pods.items() if selector.items() <= labels.items()]
        assert len(matched) == 1, (service["metadata"]["name"], matched)
        workload = rendered.get(
            next(d["kind"] for d in rendered.workloads() if d["metadata"]["name"] == matched[0]), matched[0]
        )
        ports = {p["name"] for c in containers(workload, init=False) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port, ports)


def test_gpu_pool_daemonsets(render):
    rendered = render(_values("gpu-pool"))
    a100 = rendered.get("DaemonSet", "demo-twinkle-worker-a100")
    l4 = rendered.get("DaemonSet", "demo-twinkle-worker-l4")
    a100_spec, l4_spec = pod_spec(a100), pod_spec(l4)

    # a pool's selector adds to the chart-wide one
    assert a100_spec["nodeSelector"] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
    }
    # a pool's own tolerations replace the defaults
    assert {t["key"] for t in l4_spec["tolerations"]} == {"lab.example.org/shared", "nvidia.com/gpu"}
    assert a100_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

    a100_worker = a100_spec["containers"][0]
    assert a100_worker["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert a100_worker["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert a100_worker["resources"]["requests"]["cpu"] == "16"
    l4_worker = l4_spec["containers"][0]
    assert l4_worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    # pools without their own resources keep the chart-wide requests
    assert l4_worker["resources"]["requests"]["memory"] == "16Gi"

    env = {e["name"]: e for e in a100_worker["env"]}
    assert env["TWINKLE_WORKER_RANKS"]["value"] == "8"
    assert env["TWINKLE_WORKER_DEVICE_MODEL"]["value"] == "NVIDIA-A100-SXM4-80GB"
    assert env["TWINKLE_WORKER_MEMORY_GB"]["value"] == "80"
    assert env["TWINKLE_WORKER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"

    probe = a100_worker["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in a100_worker["ports"]}
    assert ports[probe["port"]] == 8081
    assert a100_spec["volumes"][0]["hostPath"]["path"] == "/var/lib/twinkle-worker"


@pytest.mark.slow
def test_worker_update_strategy_on_delete_is_valid(render):
    """OnDelete lets a lab replace worker pods only on idle nodes; Helm merges the default rollingUpdate
    block into the values, and Kubernetes refuses that block next to OnDelete."""
    values = load_values(JOIN_POOL_VALUES)
    values["worker"]["updateStrategy"] = {"type": "OnDelete"}
    rendered = render(values)
    daemonset = rendered.get("DaemonSet", "demo-twinkle-worker")
    assert daemonset["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert validate_manifests([daemonset]) == []


def test_join_pool_installs_only_workers(render):
    rendered = render(_values("join-pool"))
    assert {d["kind"] for d in rendered.docs} == {"DaemonSet", "ConfigMap", "Secret", "ServiceAccount", "NetworkPolicy"}
    worker_config = rendered.configmap_data("demo-twinkle-worker")
    assert worker_config["TWINKLE_WORKER_SERVER_URL"] == "https://twinkle.example.org"
    secret = rendered.get("Secret", "demo-twinkle")
    # a pool that joins another platform holds its worker token and nothing else
    assert set(secret["data"]) == {"worker-token"}
    worker = pod_spec(rendered.get("DaemonSet", "demo-twinkle-worker"))["containers"][0]
    assert "TWINKLE_WORKER_REDIS_URL" not in {e["name"] for e in worker["env"]}


def test_ingress_and_service_monitor(render):
    rendered = render(_values("gpu-pool"))
    ingress = rendered.get("Ingress", "demo-twinkle")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "demo-twinkle-api", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["hosts"] == ["twinkle.lab.example.org"]

    monitor = rendered.get("ServiceMonitor", "demo-twinkle-api")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    service = rendered.get("Service", "demo-twinkle-api")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


def test_every_container_has_resource_requests(render):
    rendered = render(_values("gpu-pool"))
    for workload in rendered.workloads():
        for container in containers(workload):
            requests = container.get("resources", {}).get("requests", {})
            assert "cpu" in requests and "memory" in requests, (workload["metadata"]["name"], container["name"])


def test_twinkle_containers_run_locked_down(render):
    rendered = render(_values("gpu-pool"))
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_notes_tell_how_to_reach_the_api_and_create_a_user(render):
    notes = render().notes
    assert "kubectl port-forward -n lab svc/demo-twinkle-api 8000:8000" in notes
    assert "kubectl get secret -n lab demo-twinkle -o jsonpath='{.data.admin-token}'" in notes
    assert "/api/v1/users" in notes and '{"name": "alice"}' in notes
    assert "deploy/demo-twinkle-api -c api -- twinkle-scheduler create-user alice" in notes
    # how to add GPUs when no pool is configured yet
    assert "twinkle-scheduler create-worker-token my-lab --pool --trusted -q" in notes

    with_ingress = render(_values("gpu-pool")).notes
    assert "export TWINKLE_API_URL=https://twinkle.lab.example.org" in with_ingress
    assert "kubectl get daemonsets -n lab" in with_ingress


def test_helm_lint_is_clean(helm):
    for values in (None, load_values(GPU_POOL_VALUES), load_values(JOIN_POOL_VALUES)):
        report = helm.lint(CHART, values, strict=True)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_packages(helm, tmp_path):
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        assert packaged.metadata["name"] == "twinkle"
        # ci/ values files stay out of the package (.helmignore)
        assert not [f for f in packaged.files if f["name"].startswith("ci/")]
        assert packaged.schema is not None
