"""deploy/k8s, rendered by ``kubectl kustomize`` and checked without a cluster: every object
against the Kubernetes API schemas, the CRDs (KEDA, Prometheus Operator) by hand, the pods'
commands and env against the supervisor's and the config loader, the learner's multi-node
wiring, probes, pod security, and checkov's policies."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest

from common.config import load_config
from common.transport.keys import STREAM_GROUPS, Keys
from services.stack import ROLES, service_command
from tests.unit.k8s_manifests import (
    CONFIG_PATH,
    FIELD_VALUES,
    K8S,
    OVERLAYS,
    REPO,
    containers,
    env_of,
    env_values,
    luffy_containers,
    objects,
    pod_spec,
    render,
    rendered_text,
    run_config_file,
    workloads,
)

# the oldest release with the pod-index label the learner's node rank comes from, and the newest
K8S_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())
# ids that do not read "gpu": tests marked so (by name too) run only on a GPU machine
EACH_OVERLAY = pytest.mark.parametrize("overlay", OVERLAYS, ids=[f"{o}-overlay" for o in OVERLAYS])
# custom resources (not in the Kubernetes schemas): their API version and required spec fields
CRDS = {
    "ScaledObject": ("keda.sh/v1alpha1", ("scaleTargetRef.name", "triggers")),
    "TriggerAuthentication": ("keda.sh/v1alpha1", ("secretTargetRef",)),
    "ServiceMonitor": ("monitoring.coreos.com/v1", ("selector", "endpoints")),
}
SECRET = "luffy-secrets"
CHECKOV = REPO / ".venv-checkov/bin/checkov"
# checkov checks a manifest may waive (checkov.io/skipN annotation with its reason); a new
# waiver has to be argued here too
WAIVABLE = {
    "CKV_K8S_43": "image digests: tags are pinned, digests are registry-specific",
    "CKV_K8S_35": "secrets as env vars: luffy's config reads LUFFY_* env only",
    "CKV_K8S_38": "service account token: Prometheus' pod discovery needs it",
}


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"]["labels"]


def config(overlay, container, tmp_path):
    return load_config(run_config_file(overlay, tmp_path), environ=env_values(container))


def namespace(overlay):
    (name,) = objects(overlay, "Namespace")
    return name


@EACH_OVERLAY
def test_every_object_is_valid_against_the_kubernetes_schemas(overlay):
    kinds = set()
    for obj in render(overlay):
        kinds.add(obj["kind"])
        assert obj["kind"] == "Namespace" or obj["metadata"]["namespace"] == namespace(overlay)
        if obj["kind"] in CRDS:
            api_version, fields = CRDS[obj["kind"]]
            assert obj["apiVersion"] == api_version
            for field in fields:
                value = functools.reduce(lambda node, key: node[key], field.split("."), obj["spec"])
                assert value, (obj["kind"], field)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    assert {"StatefulSet", "Deployment", "Service", "NetworkPolicy", *CRDS} <= kinds


def test_the_schema_check_rejects_a_misspelled_field():
    deployment = copy.deepcopy(objects("cpu", "Deployment")["luffy-verifier"])
    pod_spec(deployment)["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@EACH_OVERLAY
def test_keda_scales_generators_on_the_prompts_streams_lag(overlay, tmp_path):
    (scaled,) = objects(overlay, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] in objects(overlay, "Deployment")
    target = objects(overlay, "Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    assert "replicas" not in target["spec"]  # KEDA's HPA owns it; apply would reset it
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    cfg = config(overlay, containers(target, init=False)[0], tmp_path)
    assert trigger["type"] == "redis-streams"
    assert meta["stream"] == Keys(cfg.run.name).stream("prompts")
    assert meta["consumerGroup"] == STREAM_GROUPS["prompts"]
    assert int(meta["lagCount"]) > 0 and int(meta["activationLagCount"]) >= 0
    assert "pendingEntriesCount" not in meta and "streamLength" not in meta
    # the KEDA operator runs in its own namespace: the address must name ours
    (redis_port,) = objects(overlay, "Service")["luffy-redis"]["spec"]["ports"]
    assert meta["address"] == f"luffy-redis.{namespace(overlay)}.svc:{redis_port['port']}"
    auth = objects(overlay, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": SECRET, "key": "redis-password"}
    ]


@EACH_OVERLAY
def test_the_service_monitor_selects_a_service_over_every_luffy_pod(overlay):
    (monitor,) = objects(overlay, "ServiceMonitor").values()
    services = [
        s
        for s in objects(overlay, "Service").values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in services] == ["luffy-metrics"]
    ports = {p["name"] for p in services[0]["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints and all(e["port"] in ports for e in endpoints)
    selector = services[0]["spec"]["selector"].items()
    for workload, _ in luffy_containers(overlay):
        assert selector <= pod_labels(workload).items()
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "8000"


@EACH_OVERLAY
def test_every_service_runs_the_supervisors_command_and_its_env_parses(overlay, tmp_path):
    roles = set()
    for workload, container in luffy_containers(overlay):
        role = container["command"][1]
        roles.add(role)
        assert container["command"] == service_command(role, CONFIG_PATH)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = {v["name"]: v for v in pod_spec(workload)["volumes"]}[mounts["/etc/luffy"]]
        assert volume["configMap"]["name"].startswith("luffy-config-")
        cfg = config(overlay, container, tmp_path)  # every LUFFY_* name is a config key
        if role not in ROLES:
            continue
        assert pod_labels(workload)["app.kubernetes.io/component"] == role
        env = env_of(container)
        for name, key in (("REDIS__PASSWORD", "redis-password"), ("SERVICES__TOKEN", "token")):
            assert env[f"LUFFY_{name}"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}
        assert cfg.redis.url == "redis://luffy-redis:6379/0"  # the Service; no password in it
        assert (cfg.services.host, cfg.services.port) == ("0.0.0.0", 8000)
        assert cfg.services.advertise_host == FIELD_VALUES["status.podIP"]
        assert cfg.services.token.get_secret_value() == "secret-token"
        assert cfg.run.output_dir.as_posix() in mounts  # the shared volume
        assert mounts[cfg.run.output_dir.as_posix()] == "runs"
        # a read-only root: HOME (caches) and /tmp are volumes
        assert {"HOME", "XDG_CACHE_HOME"} <= env.keys() and env["HOME"]["value"] in mounts
        assert "/tmp" in mounts
    assert set(ROLES) <= roles


@EACH_OVERLAY
def test_the_learner_is_a_statefulset_with_one_pod_per_node(overlay, tmp_path):
    sts = objects(overlay, "StatefulSet")["luffy-learner"]
    (learner,) = containers(sts, init=False)
    cfg = config(overlay, learner, tmp_path)
    env = env_of(learner)
    assert sts["spec"]["replicas"] == cfg.learner.nnodes
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    rank = env["LUFFY_LEARNER__NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert rank == "metadata.labels['apps.kubernetes.io/pod-index']"
    nodes = objects(overlay, "Service")[sts["spec"]["serviceName"]]
    assert nodes["spec"]["clusterIP"] == "None" and nodes["spec"]["publishNotReadyAddresses"]
    assert nodes["spec"]["selector"].items() <= pod_labels(sts).items()
    assert cfg.learner.master_addr == f"luffy-learner-0.{sts['spec']['serviceName']}"
    assert cfg.learner.master_port in [p["port"] for p in nodes["spec"]["ports"]]
    assert (cfg.sync.host, cfg.sync.advertise_host) == ("0.0.0.0", FIELD_VALUES["status.podIP"])
    assert cfg.learner.resume  # a restarted pod continues from the newest checkpoint
    runs = objects(overlay, "PersistentVolumeClaim")["luffy-runs"]
    assert runs["spec"]["accessModes"] == ["ReadWriteMany"]  # every learner rank writes there
    gpus = [int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in containers(sts)]
    if overlay == "gpu":
        assert gpus == [cfg.learner.nproc]  # one rank per GPU of the pod
        generator = objects(overlay, "Deployment")["luffy-generator"]
        assert containers(generator)[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert all(c["image"] == "luffy-async:gpu" for c in containers(sts) + containers(generator))
    else:
        assert "nvidia.com/gpu" not in rendered_text(overlay)


@EACH_OVERLAY
def test_probes_ask_healthz_for_liveness_and_readyz_for_readiness(overlay):
    def target(probe):
        if "httpGet" in probe:
            return f"{probe['httpGet']['port']}{probe['httpGet']['path']}"
        return " ".join(probe["exec"]["command"]).split("u.urlopen('")[1].split(", timeout")[0]

    for workload, container in luffy_containers(overlay):
        if container in pod_spec(workload).get("initContainers", []):
            continue
        for probe, route in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            url = f"http://127.0.0.1:8000{route}'"  # the learner's, from a python one-liner
            assert target(container[probe]) in (f"http{route}", url), (probe, container["name"])
        assert {"name": "http", "containerPort": 8000} in container["ports"]


@EACH_OVERLAY
def test_every_pod_runs_unprivileged_with_bounded_resources(overlay):
    labels = objects(overlay, "Namespace")[namespace(overlay)]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads(overlay):
        spec = pod_spec(workload)
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] and ctx["runAsUser"] >= 10000 and ctx["fsGroup"] > 0
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        if workload["metadata"]["name"] != "luffy-prometheus":  # it lists pods via the API
            assert spec["automountServiceAccountToken"] is False
        claims = workload["spec"].get("volumeClaimTemplates", [])
        mounted = {v["name"] for v in spec["volumes"]} | {c["metadata"]["name"] for c in claims}
        for c in containers(workload):
            sec = c["securityContext"]
            assert sec["allowPrivilegeEscalation"] is False and sec["readOnlyRootFilesystem"]
            assert sec["capabilities"] == {"drop": ["ALL"]} and not sec.get("privileged")
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][bound].keys(), (c["name"], bound)
            assert not any("hostPort" in p for p in c.get("ports", []))
            assert {m["name"] for m in c.get("volumeMounts", [])} <= mounted


def test_the_cpu_overlay_builds_the_tiny_model_before_the_services_use_it(tmp_path):
    sts = objects("cpu", "StatefulSet")["luffy-learner"]
    (init,) = pod_spec(sts)["initContainers"]
    assert init["command"] == service_command("init", CONFIG_PATH)
    cfg = config("cpu", init, tmp_path)
    generator = objects("cpu", "Deployment")["luffy-generator"]
    (wait,) = pod_spec(generator)["initContainers"]
    assert f"{cfg.model.path}/config.json" in wait["command"][-1]
    assert str(cfg.learner.train_file) in wait["command"][-1]
    assert "initContainers" not in pod_spec(objects("gpu", "StatefulSet")["luffy-learner"])


def test_the_dashboard_configmap_is_the_compose_dashboard():
    original = (REPO / "deploy/grafana/dashboards/luffy.json").read_text()
    assert (K8S / "base/monitoring/luffy.json").read_text() == original, (
        "deploy/k8s/base/monitoring/luffy.json is a copy of deploy/grafana/dashboards/luffy.json:"
        " copy it again"
    )
    (cm,) = [c for n, c in objects("cpu", "ConfigMap").items() if n.startswith("luffy-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["luffy.json"]) == json.loads(original)


def checkov_results(overlay: str, tmp_path: Path) -> dict:
    assert CHECKOV.is_file(), "checkov is missing: run deploy/local/setup-checkov.sh"
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered_text(overlay))
    out = subprocess.run(
        [CHECKOV, "-f", manifest, "--framework", "kubernetes", "-o", "json", "--compact"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["check_type"] == "kubernetes", out.stderr
    return report


@EACH_OVERLAY
def test_checkov_passes_every_policy_but_the_waived_ones(overlay, tmp_path):
    report = checkov_results(overlay, tmp_path)
    results = report["results"]
    failed = [(c["check_id"], c["check_name"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [] and results["parsing_errors"] == []
    assert report["summary"]["passed"] > 100  # it did read the workloads
    for check in results["skipped_checks"]:
        assert check["check_id"] in WAIVABLE, check["check_id"]
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check
