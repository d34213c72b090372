"""Secure by default, in docker-compose.yml (and the GPU file derived from it) and in the
rendered Kubernetes overlays alike: nothing listens beyond the machine or the cluster, nothing
runs without a password or token, and no secret value is in the repo."""

from __future__ import annotations

import re

import pytest
import yaml

from services.compose import gpu_stack
from tests.unit.k8s_manifests import (
    OVERLAYS,
    REPO,
    env_of,
    luffy_containers,
    objects,
    pod_spec,
    render,
    rendered_text,
)

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
GPU_STACK = gpu_stack(COMPOSE, [0, 1, 2, 3], generators=4, gpus=8)
EACH_OVERLAY = pytest.mark.parametrize("overlay", OVERLAYS, ids=[f"{o}-overlay" for o in OVERLAYS])
SECRET = "luffy-secrets"


def required(var: str) -> re.Pattern[str]:
    """Compose's ``${VAR:?message}``: the value from .env, or no start at all."""
    return re.compile(rf"\$\{{{var}:\?[^}}]*luffy secrets[^}}]*\}}")


def luffy_services(compose):
    return {n: s for n, s in compose["services"].items() if s.get("command", [""])[0] == "luffy"}


@pytest.mark.parametrize("compose", [COMPOSE, GPU_STACK], ids=["compose", "derived-gpu-file"])
def test_compose_publishes_ports_on_loopback_only(compose):
    published = [(n, p) for n, s in compose["services"].items() for p in s.get("ports", [])]
    assert {n for n, _ in published} == {"prometheus", "grafana"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


@pytest.mark.parametrize("compose", [COMPOSE, GPU_STACK], ids=["compose", "derived-gpu-file"])
def test_every_compose_service_needs_the_token_and_redis_password(compose):
    services = luffy_services(compose)
    assert services
    for name, svc in services.items():
        env = svc["environment"]
        assert required("LUFFY_TOKEN").fullmatch(env["LUFFY_SERVICES__TOKEN"]), name
        assert required("REDIS_PASSWORD").fullmatch(env["LUFFY_REDIS__PASSWORD"]), name
        assert "@" not in env["LUFFY_REDIS__URL"]  # the password stays out of the URL


def test_compose_redis_and_grafana_need_their_passwords():
    redis = COMPOSE["services"]["redis"]
    assert '--requirepass "$$REDIS_PASSWORD"' in redis["command"][2]
    assert required("REDIS_PASSWORD").fullmatch(redis["environment"]["REDIS_PASSWORD"])
    # the healthcheck's redis-cli authenticates from the environment
    assert required("REDIS_PASSWORD").fullmatch(redis["environment"]["REDISCLI_AUTH"])
    grafana = COMPOSE["services"]["grafana"]["environment"]
    assert required("GRAFANA_ADMIN_PASSWORD").fullmatch(grafana["GF_SECURITY_ADMIN_PASSWORD"])
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana


def test_the_secrets_file_is_never_committed():
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


@EACH_OVERLAY
def test_k8s_exposes_no_service_outside_the_cluster(overlay):
    for name, service in objects(overlay, "Service").items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name
    assert not objects(overlay, "Ingress")
    for workload in [d for d in render(overlay) if "template" in d.get("spec", {})]:
        assert not pod_spec(workload).get("hostNetwork")


@EACH_OVERLAY
def test_k8s_services_take_token_and_passwords_from_the_users_secret(overlay):
    def secret_key(env, name):
        return env[name]["valueFrom"]["secretKeyRef"]

    assert not objects(overlay, "Secret")  # `luffy secrets --k8s` makes it; none is shipped
    for _, container in luffy_containers(overlay):
        if container["command"][1] == "init":
            continue
        env = env_of(container)
        assert secret_key(env, "LUFFY_SERVICES__TOKEN") == {"name": SECRET, "key": "token"}
        assert secret_key(env, "LUFFY_REDIS__PASSWORD") == {"name": SECRET, "key": "redis-password"}
    redis = pod_spec(objects(overlay, "StatefulSet")["luffy-redis"])["containers"][0]
    assert '--requirepass "$REDIS_PASSWORD"' in redis["command"][-1]
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert secret_key(env_of(redis), name) == {"name": SECRET, "key": "redis-password"}
    grafana = pod_spec(objects(overlay, "Deployment")["luffy-grafana"])["containers"][0]
    env = env_of(grafana)
    assert secret_key(env, "GF_SECURITY_ADMIN_PASSWORD") == {
        "name": SECRET,
        "key": "grafana-admin-password",
    }
    assert env["GF_AUTH_ANONYMOUS_ENABLED"]["value"] == "false"
    assert "requirepass " not in rendered_text(overlay).replace('requirepass "$REDIS_PASSWORD"', "")
