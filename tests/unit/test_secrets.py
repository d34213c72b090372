"""``luffy secrets``: random values, an owner-only .env that is never silently replaced, and a
Secret manifest with the keys deploy/k8s references."""

import stat

import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app
from services.secrets import KEYS, generate, k8s_secret, write_dotenv
from tests.unit.k8s_manifests import OVERLAYS, luffy_containers

runner = CliRunner()


def dotenv(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_values_are_long_random_and_distinct():
    first, second = generate(), generate()
    assert set(first) == set(KEYS)
    assert len(set(first.values())) == len(KEYS)
    assert all(len(v) >= 40 and first[k] != second[k] for k, v in first.items())


def test_cli_writes_an_owner_only_env_file_and_says_where(tmp_path):
    out = tmp_path / ".env"
    result = runner.invoke(app, ["secrets", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out.resolve()) in result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert set(dotenv(out)) == set(KEYS)
    assert not any(v in result.output for v in dotenv(out).values())  # nothing echoed


def test_an_existing_env_file_is_kept_unless_forced(tmp_path):
    out = tmp_path / ".env"
    out.write_text("REDIS_PASSWORD=in-use\n")
    out.chmod(0o644)
    result = runner.invoke(app, ["secrets", "--out", str(out)])
    assert result.exit_code == 1 and "--force" in result.output
    assert out.read_text() == "REDIS_PASSWORD=in-use\n"
    assert runner.invoke(app, ["secrets", "--out", str(out), "--force"]).exit_code == 0
    assert dotenv(out)["REDIS_PASSWORD"] != "in-use"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # tightened on replace too


def test_write_dotenv_refuses_to_follow_an_existing_path(tmp_path):
    out = tmp_path / ".env"
    out.write_text("x")
    with pytest.raises(FileExistsError):
        write_dotenv(out, generate())
    assert out.read_text() == "x"


def test_k8s_prints_the_secret_the_manifests_reference():
    result = runner.invoke(app, ["secrets", "--k8s", "--namespace", "luffy"])
    assert result.exit_code == 0, result.output
    secret = yaml.safe_load(result.output)
    assert secret["kind"] == "Secret" and secret["metadata"] == {
        "name": "luffy-secrets",
        "namespace": "luffy",
    }
    referenced = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for overlay in OVERLAYS
        for _, c in luffy_containers(overlay)
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert referenced <= set(secret["stringData"]) == set(KEYS.values())
    assert "namespace" not in yaml.safe_load(k8s_secret(generate()))["metadata"]
