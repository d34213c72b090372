"""``luffy status``: one table of a run, from Redis (members, queue depths, deadletters,
policy version) and every live service's /status (versions, rates, stale drops)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import httpx

from common.config import Config
from common.membership import list_members
from common.net import redact_url
from common.transport import Keys, Resilient, stream_depths
from services.stack import ROLES


def status_client(timeout_s: float = 0.5) -> httpx.Client:
    """One HTTP client for many status reads: a fresh ``httpx.get`` builds an SSL context each
    time (loading the CA bundle), which made ``luffy up``'s once-a-second dashboard cost ~6% of
    a core on the tiny stack. Status endpoints are plain HTTP on the services' own hosts."""
    return httpx.Client(timeout=timeout_s, trust_env=False)


def fetch_status(member: dict[str, Any], http: httpx.Client) -> dict[str, Any]:
    try:
        return http.get(f"http://{member['host']}:{member['port']}/status").json()
    except (httpx.HTTPError, ValueError, KeyError):
        return {}


def collect(
    cfg: Config,
    with_services: bool = False,
    redis_: Resilient | None = None,
    http: httpx.Client | None = None,
) -> dict[str, Any]:
    """A snapshot of the run; ``redis_`` and ``http`` let a caller polling every second keep
    its connections instead of opening new ones each time."""
    redis_ = redis_ or Resilient.from_config(cfg.redis)
    if not redis_.ping():
        url = redact_url(cfg.redis.url)
        raise ConnectionError(f"redis at {url} is not reachable: {redis_.last_error}")
    keys = Keys(cfg.run.name)
    version = redis_.client.get(keys.policy_version)
    members = {role: list_members(redis_, keys, role) for role in ROLES}
    snap = {
        "run": cfg.run.name,
        "policy_version": int(version) if version is not None else None,
        "members": members,
        "streams": stream_depths(redis_, keys),
    }
    if with_services:
        with nullcontext(http) if http else status_client() as client:
            snap["statuses"] = {
                role: [fetch_status(m, client) for m in ms] for role, ms in members.items()
            }
    return snap


def member_rows(snap: dict[str, Any]) -> list[list[str]]:
    """One row per live service: role, id, address, ready, version, progress, rate, notes."""
    rows = []
    for role in ROLES:
        statuses = snap.get("statuses", {}).get(role, [])
        for member, status in zip(snap["members"][role], statuses, strict=False):
            counters = status.get("counters", {})
            if role == "learner":
                progress = f"step {status.get('step')}/{status.get('max_steps')}"
                rate = f"reward {_fmt(status.get('reward_mean'))}"
                notes = f"stale dropped {(status.get('resolved') or {}).get('stale', 0)}"
            elif role == "generator":
                progress = f"tasks {int(counters.get('tasks', 0))}"
                rate = f"{status.get('tokens_per_s', 0)} tok/s"
                notes = (
                    status.get("sync", {}).get("last_error")
                    or f"epoch {status.get('sync', {}).get('epoch')}"
                )
            else:
                scored = counters.get("scored", {})
                progress = f"scored {int(sum(scored.values()))}"
                rate = f"inflight {status.get('inflight', 0)}"
                notes = f"timeouts {counters.get('timeouts', 0)}"
            version = status.get("policy_version", member.get("policy_version", "-"))
            rows.append(
                [
                    role,
                    str(member.get("id")),
                    f"{member.get('host')}:{member.get('port')}",
                    "yes" if member.get("ready") else "; ".join(member.get("not_ready") or ["no"]),
                    str(version),
                    progress,
                    rate,
                    str(notes),
                ]
            )
    return rows


def print_status(cfg: Config) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    try:
        snap = collect(cfg, with_services=True)
    except ConnectionError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    dead = snap["streams"].get("deadletter", {}).get("length", 0)
    console.print(
        f"run [bold]{snap['run']}[/bold]  policy version {snap['policy_version']}  "
        f"deadletter entries {dead}"
    )
    members = Table("role", "id", "address", "ready", "version", "progress", "rate", "notes")
    for row in member_rows(snap):
        members.add_row(*row)
    console.print(members)
    streams = Table("stream", "length", "not yet read", "read, unacked")
    for name, depth in snap["streams"].items():
        streams.add_row(name, *(str(depth.get(k, "")) for k in ("length", "lag", "pending")))
    console.print(streams)
    return 0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


__all__ = ["collect", "fetch_status", "member_rows", "print_status", "status_client"]
