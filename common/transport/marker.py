"""The run marker: how every service notices that Redis lost the run's state.

The learner creates ``luffy:{run}:incarnation`` (a random id) when it starts a run's state, or
finds it. Each service keeps the id it works for and checks the key every few seconds; its
consumer's commits carry the id and Redis refuses them atomically when the key differs (see
scripts/commit.lua), so outputs read under a lost state never land in a new one. Gone or
different means Redis restarted without persistence or was flushed.
"""

from __future__ import annotations

import logging
import time
import uuid

from common.transport.client import Resilient
from common.transport.keys import Keys

log = logging.getLogger(__name__)
CHECK_EVERY_S = 2.0


class RunMarker:
    def __init__(self, redis_: Resilient, keys: Keys, every_s: float = CHECK_EVERY_S):
        self.redis, self.keys, self.every_s = redis_, keys, every_s
        self.value = ""  # the incarnation this process works for ('' = none known yet)
        self.lost_since: float | None = None
        self.reason = ""  # why the state is gone, while it is
        self._next = 0.0

    def _read(self) -> str:
        raw = self.redis.call(self.redis.client.get, self.keys.incarnation)
        return raw.decode() if raw else ""

    def claim(self) -> bool:
        """The learner's: create the marker if Redis has none; returns True if it created it
        (a new run's state, or a state Redis lost)."""
        fresh = uuid.uuid4().hex
        created = bool(
            self.redis.call(self.redis.client.set, self.keys.incarnation, fresh, nx=True)
        )
        self.value, self.lost_since, self.reason = self._read(), None, ""
        return created

    def lost(self) -> str:
        """Why the state this process works for is gone ('' when it is not); read at most every
        ``every_s``. A process that knew no marker adopts the first it sees; one whose marker
        vanished adopts the next one the learner creates (it rebuilt the state)."""
        now = time.monotonic()
        if now < self._next:
            return self.reason
        self._next = now + self.every_s
        current = self._read()
        if current == self.value:
            return self.reason
        if not current:
            if not self.reason:
                self.lost_since = time.time()
                self.reason = (
                    f"Redis lost the run's state (its marker {self.keys.incarnation} is gone: "
                    "Redis restarted without persistence, or was flushed)"
                )
                log.error("%s", self.reason)
            return self.reason
        if self.value:
            log.info("the run's state was rebuilt in Redis (incarnation %s): going on", current)
        self.value, self.reason, self.lost_since = current, "", None
        return ""


__all__ = ["CHECK_EVERY_S", "RunMarker"]
