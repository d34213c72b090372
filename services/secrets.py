"""``luffy secrets``: the stack's secrets, made fresh and random, for compose or Kubernetes.

Compose and the Kubernetes manifests ship no secret values, so there is no default password
to forget to change: compose refuses to start without ``.env`` (``${VAR:?...}``) and the pods
wait for the ``luffy-secrets`` Secret. ``write_dotenv`` writes ``.env`` owner-only and never
replaces an existing one unless asked (it would lock the stack out of its own Redis volume,
whose password is already set); ``k8s_secret`` prints the same values as a Secret manifest.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_NAME = "luffy-secrets"
# .env variable (docker-compose.yml) -> key in the Kubernetes Secret (deploy/k8s)
KEYS = {
    "LUFFY_TOKEN": "token",
    "REDIS_PASSWORD": "redis-password",
    "GRAFANA_ADMIN_PASSWORD": "grafana-admin-password",
}


def generate() -> dict[str, str]:
    """One random value per secret: 32 bytes, URL-safe (no quoting needed in .env, YAML, a
    shell or a redis:// URL)."""
    return {name: secrets.token_urlsafe(32) for name in KEYS}


def dotenv_text(values: dict[str, str]) -> str:
    lines = ["# Written by `luffy secrets`: the compose stack's secrets. Keep it out of git."]
    return "\n".join([*lines, *(f"{name}={values[name]}" for name in KEYS)]) + "\n"


def write_dotenv(path: Path, values: dict[str, str], force: bool = False) -> Path:
    """Write ``values`` to ``path`` with mode 0600. An existing file is kept (FileExistsError)
    unless ``force``: its values may already be in use (Redis' AOF volume, Grafana's data)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # an existing file replaced under --force may have had wider modes
    with os.fdopen(fd, "w") as fh:
        fh.write(dotenv_text(values))
    return path


def k8s_secret(values: dict[str, str], namespace: str | None = None) -> str:
    """The ``luffy-secrets`` Secret the manifests in deploy/k8s reference, as YAML for
    ``kubectl apply -f -``."""
    import yaml

    metadata: dict[str, str] = {"name": SECRET_NAME}
    if namespace:
        metadata["namespace"] = namespace
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {key: values[name] for name, key in KEYS.items()},
    }
    return yaml.safe_dump(manifest, sort_keys=False)


__all__ = ["KEYS", "SECRET_NAME", "dotenv_text", "generate", "k8s_secret", "write_dotenv"]
