"""The Kubernetes overlays as the cluster would receive them: ``kubectl kustomize`` output,
parsed, and the pieces the tests read (workloads, containers, the run's config). Rendered once
per overlay and session; a missing kubectl fails the tests that need it."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
OVERLAYS = ("cpu", "gpu")
CONFIG_PATH = "/etc/luffy/run.toml"  # where the pods mount the run's ConfigMap
WORKLOADS = ("Deployment", "StatefulSet", "Job", "DaemonSet")
# placeholders for env values the cluster fills in (downward API, the user's Secret)
FIELD_VALUES = {"status.podIP": "10.1.2.3", "metadata.labels['apps.kubernetes.io/pod-index']": "0"}


@functools.cache
def rendered_text(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/k8s"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered_text(overlay)) if doc]


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == kind}


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [d for d in render(overlay) if d["kind"] in WORKLOADS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def luffy_containers(overlay: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container that runs a ``luffy`` command."""
    return [
        (w, c)
        for w in workloads(overlay)
        for c in containers(w)
        if c.get("command", [""])[0] == "luffy"
    ]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """The container's env as the process would see it, with a stand-in for each value the
    cluster fills in (secrets, the pod's IP and index)."""
    out = {}
    for name, entry in env_of(container).items():
        if "value" in entry:
            out[name] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            out[name] = "secret-" + entry["valueFrom"]["secretKeyRef"]["key"]
        else:
            out[name] = FIELD_VALUES[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


def run_config_file(overlay: str, tmp: Path) -> Path:
    """The overlay's run.toml (from its ConfigMap) written to ``tmp``, its ``extends`` of a
    config in the image (/app/configs) pointed at the repo's configs/."""
    (cm,) = [c for n, c in objects(overlay, "ConfigMap").items() if n.startswith("luffy-config-")]
    text = cm["data"]["run.toml"]
    assert 'extends = "/app/configs/' in text
    path = tmp / f"{overlay}-run.toml"
    path.write_text(text.replace('extends = "/app/configs/', f'extends = "{REPO}/configs/'))
    return path
