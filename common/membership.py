"""Membership: each live service holds ``members:{role}:{id}`` with a TTL.

``Heartbeat`` (a daemon thread owned by the service runtime) refreshes the key every
``interval_s`` with the service's current info (address, version, pid); a process that dies
stops refreshing and its key expires after ``ttl_s``. ``list_members`` reads the live set.
Heartbeats ride out Redis outages: a failed beat is logged and retried at the next interval.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from common.transport import TRANSIENT_ERRORS, Keys, Resilient

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        redis_: Resilient,
        keys: Keys,
        role: str,
        member_id: str,
        info: Callable[[], dict[str, Any]],
        interval_s: float = 2.0,
        ttl_s: float = 10.0,
    ):
        if ttl_s <= interval_s:
            raise ValueError(f"heartbeat ttl ({ttl_s}s) must exceed its interval ({interval_s}s)")
        self.redis = redis_
        self.key = keys.member(role, member_id)
        self.role, self.member_id = role, member_id
        self.info = info
        self.interval_s, self.ttl_s = interval_s, ttl_s
        self.beats = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        record = {"role": self.role, "id": self.member_id, "time": time.time(), **self.info()}
        try:
            self.redis.client.set(self.key, json.dumps(record), px=int(self.ttl_s * 1000))
        except TRANSIENT_ERRORS as exc:
            self.failures += 1
            log.debug("heartbeat failed: %s", exc)
            # readiness must not wait for the work loop, which may be busy elsewhere (a
            # learner in a weight push touches no Redis for up to sync.timeout_s)
            self.redis.connected, self.redis.last_error = False, str(exc)
            return False
        self.beats += 1
        return True

    def start(self) -> Heartbeat:
        self.beat()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.role}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self, deregister: bool = True) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.interval_s + 1)
        if deregister:
            with contextlib.suppress(*TRANSIENT_ERRORS):
                self.redis.client.delete(self.key)


def list_members(redis_: Resilient, keys: Keys, role: str) -> list[dict[str, Any]]:
    """Live members of ``role`` (records whose TTL has not expired), sorted by id."""

    def query() -> list[dict[str, Any]]:
        names = list(redis_.client.scan_iter(match=keys.members_pattern(role), count=500))
        if not names:
            return []
        out = []
        for raw in redis_.client.mget(names):
            if raw is None:  # expired between SCAN and MGET
                continue
            try:
                out.append(json.loads(raw))
            except ValueError:
                log.warning("ignoring malformed membership record %r", raw[:200])
        return sorted(out, key=lambda r: str(r.get("id")))

    return redis_.call(query)


__all__ = ["Heartbeat", "list_members"]
