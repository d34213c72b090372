"""Run-level maintenance of the streams: trimming below what every group acked, queue depths,
the stale-run check before a fresh start, and deleting a run's keys."""

from __future__ import annotations

import redis

from common.transport import scripts
from common.transport.client import Resilient
from common.transport.keys import STREAM_GROUPS, Keys


def stale_run_refusal(
    redis_: Resilient, keys: Keys, checkpoint_dir: object, where: str = ""
) -> str | None:
    """Why a run without any checkpoint (in ``checkpoint_dir``) must not start afresh: Redis
    already holds its state, and every id a fresh learner would feed again is marked done and
    would be skipped. None when Redis holds nothing of the run."""
    client = redis_.client
    done = sum(redis_.call(client.zcard, keys.done(g)) for g in STREAM_GROUPS.values())
    version = int(redis_.call(client.get, keys.policy_version) or 0)
    if not done and not version:
        return None
    return (
        f"run {keys.run!r} has no checkpoint in {checkpoint_dir} but Redis{where} already "
        f"holds its state (policy version {version}, {done} processed ids under "
        f"{keys.prefix}*): start a new run with another --run.name, or delete those keys "
        f"first (redis-cli --scan --pattern '{keys.prefix}*' | xargs redis-cli del)"
    )


def delete_run_keys(client: redis.Redis, keys: Keys) -> int:
    """Delete every Redis key of one run (what ``stale_run_refusal`` asks users to do by hand);
    returns how many. Run names are limited to ``[A-Za-z0-9_.-]``: the prefix holds no glob
    character."""
    names = list(client.scan_iter(match=keys.prefix + "*", count=500))
    for start in range(0, len(names), 500):
        client.delete(*names[start : start + 500])
    return len(names)


def trim_acked(redis_: Resilient, keys: Keys, name: str) -> int:
    """Trim ``name`` below the oldest entry some group has not acked; returns entries removed."""
    script = redis_.client.register_script(scripts.SAFE_TRIM)
    result = redis_.call(script, keys=[keys.stream(name)])
    return int(result[1]) if result else 0


def stream_depths(redis_: Resilient, keys: Keys) -> dict[str, dict[str, int]]:
    """Per stream: length, entries not yet delivered to its group (lag) and pending (unacked)."""

    def query() -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, group in STREAM_GROUPS.items():
            stream = keys.stream(name)
            try:
                groups = redis_.client.xinfo_groups(stream)
            except redis.ResponseError:
                out[name] = {"length": 0, "lag": 0, "pending": 0}
                continue
            info = next((g for g in groups if g["name"].decode() == group), None)
            out[name] = {
                "length": int(redis_.client.xlen(stream)),
                "lag": int((info or {}).get("lag") or 0),
                "pending": int((info or {}).get("pending") or 0),
            }
        out["deadletter"] = {"length": int(redis_.client.xlen(keys.deadletter))}
        return out

    return redis_.call(query)


__all__ = ["delete_run_keys", "stale_run_refusal", "stream_depths", "trim_acked"]
