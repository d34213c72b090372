"""``luffy status``: a snapshot of a run, from Redis (members, queue depths, deadletters,
policy version) and every live service's /status (versions, rates, stale drops), drawn once,
redrawn in place (``--watch``) or written as JSON (``--json``). ``services.status_view``
draws it at any terminal width."""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from typing import Any

import httpx

from common.config import Config
from common.membership import list_members
from common.net import redact_url
from common.transport import Keys, Resilient, stream_depths
from services.stack import ROLES
from services.status_view import StatusView


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


WATCH_DEFAULT_S = 2.0


def split_watch(args: list[str]) -> tuple[float | None, list[str]]:
    """``--watch``, ``--watch SECONDS`` or ``--watch=SECONDS`` taken out of the command's extra
    arguments (the rest are config overrides). Parsed here because the value is optional,
    which the command-line library cannot declare."""
    every_s, rest, i = None, [], 0
    while i < len(args):
        arg, i = args[i], i + 1
        if arg.startswith("--watch="):
            every_s = _seconds(arg.partition("=")[2])
        elif arg == "--watch":
            every_s = WATCH_DEFAULT_S
            if i < len(args) and not args[i].startswith("--"):
                every_s, i = _seconds(args[i]), i + 1
        else:
            rest.append(arg)
    return every_s, rest


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"--watch takes seconds, not {value!r}") from None
    if not 0 < seconds < math.inf:
        raise ValueError(f"--watch takes seconds > 0, not {value}")
    return seconds


def show(cfg: Config, watch_s: float | None = None, as_json: bool = False) -> int:
    """``luffy status [--watch [SECONDS]] [--json]``; returns the exit code."""
    if as_json:
        return print_json(cfg)
    return print_status(cfg) if watch_s is None else watch(cfg, watch_s)


def print_status(cfg: Config) -> int:
    """The table once (exit 2 when Redis cannot be reached)."""
    from rich.console import Console

    console = Console()
    try:
        snap = collect(cfg, with_services=True)
    except ConnectionError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    console.print(StatusView(snap))
    return 0


def print_json(cfg: Config) -> int:
    """The snapshot ``collect`` builds, as JSON on stdout: for scripts, so nothing else goes
    there (the error, if any, goes to stderr)."""
    try:
        snap = collect(cfg, with_services=True)
    except ConnectionError as exc:
        print(exc, file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    return 0


def watch(cfg: Config, every_s: float, console: Any = None, refreshes: int | None = None) -> int:
    """Redraw the table in place every ``every_s`` until Ctrl-C (``refreshes``: stop after
    that many draws). A Redis that goes away is shown and retried, not fatal: watching is what
    one does while a run is in trouble."""
    from rich.live import Live

    redis_ = Resilient.from_config(cfg.redis)  # kept across draws, as the dashboard does
    drawn = 0
    with status_client() as http, Live(console=console, auto_refresh=False) as live:
        try:
            while refreshes is None or drawn < refreshes:
                if drawn:
                    time.sleep(every_s)
                live.update(frame(cfg, every_s, redis_, http), refresh=True)
                drawn += 1
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends: exit 0, leaving the last frame on screen
    return 0


def frame(cfg: Config, every_s: float, redis_: Resilient, http: httpx.Client) -> Any:
    """One draw of ``watch``: the view of a fresh snapshot, or why there is none."""
    from rich.text import Text

    stamp = time.strftime("%H:%M:%S")
    try:
        snap = collect(cfg, with_services=True, redis_=redis_, http=http)
    except ConnectionError as exc:
        return Text(f"{stamp}  {exc}; retrying every {every_s:g}s (Ctrl-C stops)", style="red")
    return StatusView(snap, note=f"{stamp}, every {every_s:g}s; Ctrl-C stops")


__all__ = [
    "collect",
    "fetch_status",
    "frame",
    "print_json",
    "print_status",
    "show",
    "split_watch",
    "status_client",
    "watch",
]
