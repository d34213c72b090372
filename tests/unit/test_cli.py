import tomllib

import pytest
from typer.testing import CliRunner

from services.cli import app

runner = CliRunner()
SUBCOMMANDS = (
    "generator",
    "verifier",
    "learner",
    "up",
    "status",
    "prepare",
    "eval",
    "init-tiny-model",
)


def test_help_lists_every_role_and_tool():
    out = runner.invoke(app, ["--help"]).output
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("role", ["generator", "verifier", "learner", "up"])
def test_print_config_shows_the_resolved_config(role):
    result = runner.invoke(app, [role, "--print-config", "--learner.lr", "0.25", "--run.name=x1"])
    assert result.exit_code == 0, result.output
    resolved = tomllib.loads(result.output)
    assert resolved["learner"]["lr"] == 0.25 and resolved["run"]["name"] == "x1"


def test_bad_override_exits_2_naming_the_key():
    result = runner.invoke(app, ["verifier", "--verifier.workerz", "3"])
    assert result.exit_code == 2
    assert "unknown config key 'verifier.workerz' (from CLI --verifier.workerz)" in result.output
