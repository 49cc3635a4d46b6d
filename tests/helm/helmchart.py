"""Render the chart with Helm's own engine (helm-python-sdk embeds Helm v4's Go library) and read the result.

Nothing here needs a cluster: rendering is what ``helm template`` does, including the values schema check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "twinkle"
GPU_POOL_VALUES = CHART / "ci" / "gpu-pool-values.yaml"
JOIN_POOL_VALUES = CHART / "ci" / "join-pool-values.yaml"
INSTALL_HINT = "pip install helm-python-sdk==0.2.2"

RELEASE = "demo"
NAMESPACE = "lab"

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")




def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Rendered:
    """The manifests of one render, parsed, plus NOTES.txt."""

    docs: list[dict[str, Any]]
    notes: str
    files: dict[str, str] = field(repr=False)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        have = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in self.docs)
        raise KeyError(f"no {kind}/{name}; rendered: {have}")

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in WORKLOAD_KINDS]

    def configmap_data(self, name: str) -> dict[str, str]:
        return self.get("ConfigMap", name).get("data", {})


def render_chart(chart, values: dict[str, Any] | None = None) -> Rendered:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return Rendered(docs=docs, notes=notes, files=files)



def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    out = list(spec.get("containers", []))
    if init:
        out += spec.get("initContainers", [])
    return out


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def effective_env(container: dict[str, Any], rendered: Rendered) -> dict[str, str]:
    """Each variable as the container will see it, credentials shown by reference.

    A Secret key shows as ``{secret:NAME/KEY}``, so two containers reading the same credential compare
    equal without the test knowing its value. ``$(VAR)`` references are expanded as the kubelet does.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(rendered.configmap_data(source["configMapRef"]["name"]))
        elif "secretRef" in source:
            raise AssertionError("envFrom a whole Secret hides which credentials a process gets; use secretKeyRef")
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = _REF.sub(lambda m: env.get(m.group(1), m.group(0)), item["value"])
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            env[name] = "{{secret:{}/{}}}".format(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        elif "configMapKeyRef" in ref:
            env[name] = rendered.configmap_data(ref["configMapKeyRef"]["name"])[ref["configMapKeyRef"]["key"]]
        elif "fieldRef" in ref:
            env[name] = "{{field:{}}}".format(ref["fieldRef"]["fieldPath"])
        else:
            raise AssertionError(f"unhandled env source {ref}")
    return env


def process_argv(container: dict[str, Any], image_entrypoint: list[str]) -> list[str]:
    """The argv Kubernetes starts: ``command`` replaces the image's ENTRYPOINT, ``args`` its CMD."""
    if "command" in container:
        return list(container["command"]) + list(container.get("args", []))
    return list(image_entrypoint) + list(container.get("args", []))
