"""The stack's service commands, shared by ``luffy up`` and docker-compose.yml.

A service is started as ``luffy <role> --config <file>``; everything that differs between
instances or between the local supervisor and compose travels in ``LUFFY_*`` environment
variables (Redis URL, bind address, CLI overrides given to ``luffy up``). A test checks that
docker-compose.yml runs exactly these commands.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.config import ENV_PREFIX, cli_overrides

ROLES = ("learner", "generator", "verifier")
ONESHOT = ("init",)  # prepares the tiny model and the synthetic task, then exits


def service_command(role: str, config_path: str) -> list[str]:
    if role not in ROLES + ONESHOT:
        raise ValueError(f"unknown role {role!r}; roles: {ROLES + ONESHOT}")
    return ["luffy", role, "--config", config_path]


def role_of_command(cmd: str) -> str | None:
    """The role a process runs, from its command line (``service_command``'s or
    ``python -m services.<role>``); None when it is none of the stack's services."""
    for role in ROLES:
        if f"services.{role}" in cmd or f"luffy {role}" in cmd:
            return role
    return None


def overrides_as_env(overrides: Sequence[str]) -> dict[str, str]:
    """``--learner.max_steps 5`` -> ``{"LUFFY_LEARNER__MAX_STEPS": "5"}`` for child processes."""
    return {
        ENV_PREFIX + dotted.upper().replace(".", "__"): raw
        for dotted, (raw, _) in cli_overrides(list(overrides)).items()
    }


__all__ = ["ONESHOT", "ROLES", "overrides_as_env", "role_of_command", "service_command"]
